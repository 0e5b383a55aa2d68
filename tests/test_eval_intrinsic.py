"""Bits-per-byte / perplexity (by hand, sliding window, the `evaluate` modules) and the readable outputs:
results files and plots, the model card's model-index, the in-training hook and the score-vs-tokens plot."""

import json
import math

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: oversubscribed threads make tiny matmuls far slower
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_model(tiny_tokenizer):
    from hfscratch import HfscratchForCausalLM
    from tests.helpers import tiny_config

    torch.manual_seed(1)
    return HfscratchForCausalLM(tiny_config(tiny_tokenizer, max_position_embeddings=256)).eval()


def _summed_nll(model, ids):
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return -sum(logprobs[i - 1, ids[i]].item() for i in range(1, len(ids)))


def test_bits_per_byte_equals_hand_computation(tiny_model, tiny_tokenizer, shakespeare_text):
    from hfscratch.evaluation import score_texts

    text = shakespeare_text[:300]
    ids = [tiny_tokenizer.bos_token_id] + tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) <= 256
    nll = _summed_nll(tiny_model, ids)
    expected_bpb = nll / math.log(2) / len(text.encode("utf-8"))

    single = score_texts(tiny_model, tiny_tokenizer, [text], max_length=256, stride=256, progress=False)
    assert single.tokens == len(ids) - 1 and single.bytes == len(text.encode("utf-8"))
    assert single.bits_per_byte == pytest.approx(expected_bpb, rel=1e-5)
    assert single.perplexity == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-5)
    # For a text that fits one window, the stride changes nothing.
    strided = score_texts(tiny_model, tiny_tokenizer, [text], max_length=256, stride=16, progress=False)
    assert strided.bits_per_byte == pytest.approx(single.bits_per_byte, rel=1e-6)
    # An untrained model over a 512-token vocabulary is near-uniform: ~9 bits per token.
    assert 8.0 < single.bits_per_token < 10.0


def test_sliding_window_over_long_text(tiny_model, tiny_tokenizer, shakespeare_text):
    from hfscratch.evaluation import score_texts, sliding_windows

    for n_tokens, window, stride in ((300, 64, 32), (300, 64, 64), (64, 64, 64), (2, 8, 4), (1000, 128, 100)):
        windows = sliding_windows(n_tokens, window, stride)
        scored = [t for _, start, end in windows for t in range(start, end)]
        assert scored == list(range(1, n_tokens))  # every token after the prefix scored exactly once
        for input_start, start, end in windows:
            assert end - input_start <= window and start - input_start >= min(start, window - min(stride, window - 1))

    text = shakespeare_text[:1200]
    ids = [tiny_tokenizer.bos_token_id] + tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 3 * 64
    # By hand: each token t is predicted from the 64-token window ending at the chunk that contains t.
    hand = 0.0
    for input_start, start, end in sliding_windows(len(ids), 64, 32):
        with torch.no_grad():
            logprobs = torch.log_softmax(tiny_model(torch.tensor([ids[input_start:end]])).logits[0].float(), dim=-1)
        hand -= sum(logprobs[t - input_start - 1, ids[t]].item() for t in range(start, end))
    scores = score_texts(tiny_model, tiny_tokenizer, [text, text[:100]], max_length=64, stride=32, batch_size=3, progress=False)
    assert scores.per_text_nll[0] == pytest.approx(hand, rel=1e-5)
    short_ids = [tiny_tokenizer.bos_token_id] + tiny_tokenizer(text[:100], add_special_tokens=False)["input_ids"]
    assert scores.per_text_nll[1] == pytest.approx(_summed_nll(tiny_model, short_ids), rel=1e-5)
    assert scores.bits_per_byte == pytest.approx(scores.nll / math.log(2) / (len(text.encode()) + len(text[:100].encode())))


def test_evaluate_metric_modules_load_by_path(tiny_model, tiny_tokenizer, shakespeare_text, tmp_path):
    import evaluate

    from hfscratch.evaluation import BITS_PER_BYTE_METRIC, PERPLEXITY_METRIC, score_texts

    texts = [shakespeare_text[:400], shakespeare_text[1000:1500]]
    expected = score_texts(tiny_model, tiny_tokenizer, texts, max_length=128, stride=64, progress=False)
    bpb = evaluate.load(str(BITS_PER_BYTE_METRIC)).compute(predictions=texts, model=tiny_model, tokenizer=tiny_tokenizer, max_length=128, stride=64)
    assert bpb["bits_per_byte"] == pytest.approx(expected.bits_per_byte, rel=1e-6)
    assert len(bpb["per_text_bits_per_byte"]) == 2
    # by folder path too, the way a user points it at a saved model
    tiny_model.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    ppl = evaluate.load(str(PERPLEXITY_METRIC)).compute(predictions=texts, model=str(tmp_path / "m"), max_length=128, stride=64, device="cpu")
    assert ppl["perplexity"] == pytest.approx(expected.perplexity, rel=1e-5)
    assert ppl["perplexities"] == pytest.approx(expected.per_text_perplexity, rel=1e-5)


def test_results_files_plots_and_model_card(tiny_model, tiny_tokenizer, shared_data, tmp_path):
    from hfscratch.evaluation import evaluate_model

    # the layout `hfscratch pretrain` writes: run/checkpoints/checkpoint-0000200/{trainer_state.json, hf/}
    model_dir = tmp_path / "run" / "checkpoints" / "checkpoint-0000200" / "hf"
    tiny_model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    (model_dir / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- hfscratch\n---\n# My model\n\nHand-written notes.\n")
    (model_dir.parent / "trainer_state.json").write_text(json.dumps({"step": 200, "tokens_seen": 409600}))
    text_file = tmp_path / "heldout.txt"
    text_file.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[-2000:])

    out = model_dir / "eval"
    results = evaluate_model(str(model_dir), tasks=["arc_easy", "piqa_local"], limit=3, data_dir=shared_data, output_dir=out,
                             bpb_files=[text_file], max_length=128, stride=64, device="cpu", update_model_card=True, verbose=False)
    assert results["hfscratch"]["renamed"] == {"arc_easy": "arc_easy_local"}  # a data folder runs the offline copy
    assert results["hfscratch"]["training_tokens"] == 409600
    for name in ("results.json", "results.md", "arc_easy_local.png", "piqa_local.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "arc_easy_local.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["piqa_local"]["acc,none"] == results["results"]["piqa_local"]["acc,none"]
    assert "|piqa_local" in (out / "results.md").read_text() and "heldout.txt" in (out / "results.md").read_text()
    assert saved["hfscratch"]["intrinsic"]["heldout.txt"]["bits_per_byte"] > 0

    from huggingface_hub import ModelCard

    card = ModelCard.load(model_dir / "README.md")
    assert "Hand-written notes." in card.text and card.data.license == "apache-2.0" and card.data.tags == ["hfscratch"]
    by_metric = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert by_metric[("piqa_local", "acc")] == pytest.approx(results["results"]["piqa_local"]["acc,none"])
    assert by_metric[("heldout.txt", "bits_per_byte")] == pytest.approx(saved["hfscratch"]["intrinsic"]["heldout.txt"]["bits_per_byte"], rel=1e-5)

    from hfscratch.evaluation import plot_scores_over_training
    from hfscratch.evaluation.reports import collect_training_points

    points = collect_training_points(tmp_path / "run")
    assert [p["tokens"] for p in points] == [409600] and points[0]["metrics"]["piqa_local/acc"] == results["results"]["piqa_local"]["acc,none"]
    assert plot_scores_over_training(tmp_path / "run").read_bytes()[:4] == b"\x89PNG"


def test_training_hook_restores_mode_logs_and_plots(tiny_tokenizer, shared_data, tmp_path):
    from hfscratch import HfscratchForCausalLM
    from hfscratch.evaluation import plot_scores_over_training, run_training_eval
    from tests.helpers import tiny_config

    model = HfscratchForCausalLM(tiny_config(tiny_tokenizer, max_position_embeddings=256, num_hidden_layers=1))
    model.train()

    class Writer:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, tag, value, global_step=None):
            self.scalars.append((tag, value, global_step))

    writer = Writer()
    for step in (10, 20):
        metrics = run_training_eval(model, tiny_tokenizer, ["arc_easy_local", "winogrande_local"], limit=2, data_dir=str(shared_data),
                                    step=step, tokens=step * 1024, run_dir=tmp_path, writer=writer)
        assert model.training  # back in train mode for the next optimizer step
        with torch.no_grad():
            model.model.embed_tokens.weight.mul_(1.5)  # "training" between evaluations
    assert set(metrics) == {"arc_easy_local/acc", "arc_easy_local/acc_norm", "winogrande_local/acc"}
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in metrics.values())
    assert ("eval/winogrande_local/acc", metrics["winogrande_local/acc"], 20) in writer.scalars
    history = [json.loads(line) for line in (tmp_path / "eval_history.jsonl").read_text().splitlines()]
    assert [h["tokens"] for h in history] == [10240, 20480]
    png = plot_scores_over_training(tmp_path)
    assert png.name == "scores_over_training.png" and png.read_bytes()[:4] == b"\x89PNG"


def test_chat_template_and_fewshot_pass_through(tiny_tokenizer, shared_data):
    import copy

    from hfscratch import HfscratchForCausalLM
    from hfscratch.errors import ConfigError
    from hfscratch.evaluation import evaluate_model
    from hfscratch.tokenizer import ensure_chat_template
    from tests.helpers import tiny_config

    plain = HfscratchForCausalLM(tiny_config(tiny_tokenizer, max_position_embeddings=512, num_hidden_layers=1))
    with pytest.raises(ConfigError, match="chat template"):
        evaluate_model(plain, tiny_tokenizer, tasks=["gsm8k_chat_local"], limit=1, data_dir=shared_data, apply_chat_template=True)

    chat_tok = ensure_chat_template(copy.deepcopy(tiny_tokenizer))
    model = HfscratchForCausalLM(tiny_config(chat_tok, max_position_embeddings=512, num_hidden_layers=1))
    results = evaluate_model(model, chat_tok, tasks=["gsm8k_chat_local", "arc_easy_local"], limit=2, num_fewshot=1,
                             data_dir=shared_data, apply_chat_template=True, gen_kwargs={"max_gen_toks": 4},
                             log_samples=True, verbose=False)
    assert results["n-shot"] == {"gsm8k_chat_local": 0, "arc_easy_local": 1}  # a task pinned to 0-shot stays 0-shot
    sample = results["samples"]["gsm8k_chat_local"][0]
    question = sample["doc"]["question"]
    user_turn = f"{question}\nSolve it step by step, then write the final answer on its own line as \"#### <number>\"."
    expected = chat_tok.apply_chat_template([{"role": "user", "content": user_turn}], tokenize=False, add_generation_prompt=True)
    prompt, generation_kwargs = sample["arguments"][0]
    assert prompt == expected
    assert generation_kwargs["max_gen_toks"] == 4
