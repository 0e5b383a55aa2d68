"""lm-eval on a tiny briefly-trained checkpoint: same numbers as hfscratch, via trust_remote_code without hfscratch,
and as LlamaForCausalLM; loglikelihood scores match a hand computation; GSM8K generation applies its filters."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GEN = {"max_gen_toks": 24}
TASKS = ["arc_easy_local", "lambada_openai_local", "gsm8k_local"]
LIMIT = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # 2 shared cores: more torch threads than free cores makes these tiny matmuls 10-20x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def checkpoint(one_thread, tmp_path_factory, tiny_tokenizer, shared_data):
    """A 2-layer model trained for a few seconds on GSM8K solutions, so generations contain numbers and '####'."""
    from hfscratch import HfscratchForCausalLM
    from tests.helpers import tiny_config

    torch.manual_seed(0)
    # gsm8k_local's 5-shot prompts are up to ~2,000 tokens with this 512-token BPE: a shorter context is refused
    # (the runner does not let lm-eval cut the few-shot examples off silently).
    model = HfscratchForCausalLM(tiny_config(tiny_tokenizer, max_position_embeddings=4096))
    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:400]]
    text = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in rows)
    ids = torch.tensor(tiny_tokenizer(text)["input_ids"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(60):
        starts = torch.randint(0, len(ids) - 129, (16,), generator=generator)
        batch = torch.stack([ids[s:s + 128] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 3.5, loss.item()  # it learned something
    model.eval()
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hfscratch_results(checkpoint, shared_data):
    from hfscratch.evaluation import evaluate_model

    return evaluate_model(str(checkpoint), tasks=TASKS, limit=LIMIT, data_dir=shared_data,
                          gen_kwargs=GEN, log_samples=True, device="cpu", bootstrap_iters=0, verbose=False)


def _metrics(results):
    return {task: {k: v for k, v in m.items() if "," in k and "stderr" not in k} for task, m in results["results"].items()}


def _generations(results):
    return [s["resps"][0][0] for s in results["samples"]["gsm8k_local"] if s["filter"] == "strict-match"]


REMOTE_SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys

    class BlockHfscratch(importlib.abc.MetaPathFinder):
        # `pip install -e .` puts hfscratch on every venv's path: hide it to prove the folder stands alone.
        def find_spec(self, name, path=None, target=None):
            if name == "hfscratch" or name.startswith("hfscratch.") or name == "tests" or name.startswith("tests."):
                raise ModuleNotFoundError(name)

    sys.meta_path.insert(0, BlockHfscratch())
    try:
        import hfscratch  # noqa: F401
        raise SystemExit("hfscratch should not be importable here")
    except ModuleNotFoundError:
        pass

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    folder, tasks_dir, data_dir, limit, tasks = sys.argv[1:6]
    lm = HFLM(pretrained=folder, trust_remote_code=True, device="cpu", batch_size=8)
    assert type(lm.model).__module__.startswith("transformers_modules"), type(lm.model).__module__
    manager = TaskManager(include_path=tasks_dir, include_defaults=False, metadata={"data_dir": data_dir})
    results = lm_eval.simple_evaluate(
        model=lm, tasks=tasks.split(","), task_manager=manager, limit=int(limit), batch_size=8, gen_kwargs=%r,
        log_samples=True, bootstrap_iters=0, random_seed=1234, numpy_random_seed=1234, torch_random_seed=1234,
        fewshot_random_seed=1234,
    )
    assert not [m for m in sys.modules if m == "hfscratch" or m.startswith("hfscratch.")], "hfscratch was imported"
    print("RESULTS_JSON=" + json.dumps({"metrics": results["results"], "samples": {
        t: [s["resps"][0][0] for s in rows if s.get("filter") in ("strict-match", "none")] for t, rows in results["samples"].items()}},
        default=str))
""") % (GEN,)


def test_trust_remote_code_without_hfscratch_gives_identical_results(checkpoint, hfscratch_results, shared_data, tmp_path):
    copy = tmp_path / "copied_model"
    shutil.copytree(checkpoint, copy)
    assert (copy / "modeling_hfscratch.py").is_file() and "auto_map" in (copy / "config.json").read_text()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-I", "-c", REMOTE_SCRIPT, str(copy), str(REPO / "eval" / "tasks"), str(shared_data),
         str(LIMIT), ",".join(TASKS)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULTS_JSON="))
    remote = json.loads(line[len("RESULTS_JSON="):])
    ours = _metrics(hfscratch_results)
    theirs = {t: {k: v for k, v in m.items() if "," in k and "stderr" not in k} for t, m in remote["metrics"].items()}
    assert theirs == ours
    assert remote["samples"]["gsm8k_local"] == _generations(hfscratch_results)


def _llama_copy(checkpoint, out):
    """The same weights as transformers' LlamaForCausalLM (hfscratch.export once it exists, else by state dict)."""
    try:
        from hfscratch.export import export_model
    except ImportError:
        export_model = None
    if export_model is not None:
        export_model(checkpoint, out, to="llama")
        return out
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hfscratch import HfscratchForCausalLM

    source = HfscratchForCausalLM.from_pretrained(checkpoint)
    c = source.config
    config = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps, rope_parameters=dict(c.rope_parameters), attention_bias=c.attention_bias,
        mlp_bias=c.mlp_bias, tie_word_embeddings=c.tie_word_embeddings, hidden_act=c.hidden_act,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
    )
    llama = LlamaForCausalLM(config)
    missing, unexpected = llama.load_state_dict(source.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    llama.save_pretrained(out)
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(out)
    return out


def test_llama_export_gives_identical_results(checkpoint, hfscratch_results, shared_data, tmp_path):
    from hfscratch.evaluation import evaluate_model

    llama_dir = _llama_copy(checkpoint, tmp_path / "llama")
    assert json.loads((llama_dir / "config.json").read_text())["model_type"] == "llama"
    results = evaluate_model(str(llama_dir), tasks=TASKS, limit=LIMIT, data_dir=shared_data,
                             gen_kwargs=GEN, log_samples=True, device="cpu", bootstrap_iters=0, verbose=False)
    ours, theirs = _metrics(hfscratch_results), _metrics(results)
    assert theirs.keys() == ours.keys()
    for task in ours:
        for key, value in ours[task].items():
            assert theirs[task][key] == pytest.approx(value, rel=1e-4), (task, key)  # two kernels: last-bit float noise only
    assert _generations(results) == _generations(hfscratch_results)


def test_multiple_choice_accuracy_matches_hand_computed_loglikelihoods(checkpoint, hfscratch_results):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tok = AutoTokenizer.from_pretrained(checkpoint)
    samples = hfscratch_results["samples"]["arc_easy_local"]
    assert len(samples) == LIMIT
    correct = correct_norm = 0
    for sample in samples:
        doc = sample["doc"]
        context = doc["query"] + "\nAnswer:"
        lls = []
        for choice in doc["choices"]:
            context_ids = tok(context)["input_ids"]
            whole_ids = tok(context + " " + choice)["input_ids"]
            ids = torch.tensor([whole_ids])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
            lls.append(sum(logprobs[i - 1, whole_ids[i]].item() for i in range(len(context_ids), len(whole_ids))))
        harness_lls = [resp[0][0] for resp in sample["resps"]]
        assert harness_lls == pytest.approx(lls, abs=1e-4)
        correct += int(max(range(len(lls)), key=lls.__getitem__) == doc["label"])
        normed = [ll / len(" " + c) for ll, c in zip(lls, doc["choices"])]
        correct_norm += int(max(range(len(normed)), key=normed.__getitem__) == doc["label"])
    metrics = hfscratch_results["results"]["arc_easy_local"]
    assert metrics["acc,none"] == correct / len(samples)
    assert metrics["acc_norm,none"] == correct_norm / len(samples)


def _strict(text):
    found = re.findall(r"#### (\-?[0-9\.\,]+)", text)
    return found[0] if found else "[invalid]"


def _flexible(text):
    found = re.findall(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", text)
    if not found:
        return "[invalid]"
    last = found[-1]
    return next(group for group in last if group)


def _normalise(answer):
    for pattern in (",", "\\$", "(?s).*#### ", "\\.$"):
        answer = re.sub(pattern, "", answer)
    return answer.lower().strip()


def test_gsm8k_generation_runs_end_to_end_with_filters(hfscratch_results):
    samples = hfscratch_results["samples"]["gsm8k_local"]
    by_filter = {name: [s for s in samples if s["filter"] == name] for name in ("strict-match", "flexible-extract")}
    assert all(len(rows) == LIMIT for rows in by_filter.values())
    generations = [s["resps"][0][0] for s in by_filter["strict-match"]]
    assert all("Question:" not in g for g in generations)  # the stop sequence cut the generation
    assert any(re.search(r"\d", g) for g in generations), generations  # the trained model writes numbers
    scores = {}
    for name, extract in (("strict-match", _strict), ("flexible-extract", _flexible)):
        hits = []
        for sample, generation in zip(by_filter[name], generations):
            assert sample["filtered_resps"] == [extract(generation)] or sample["filtered_resps"] == extract(generation)
            hits.append(float(_normalise(extract(generation)) == _normalise(sample["target"])))
        scores[name] = sum(hits) / len(hits)
    assert any(_flexible(g) != "[invalid]" for g in generations)
    result = hfscratch_results["results"]["gsm8k_local"]
    assert result["exact_match,strict-match"] == scores["strict-match"]
    assert result["exact_match,flexible-extract"] == scores["flexible-extract"]
    assert hfscratch_results["n-shot"]["gsm8k_local"] == 5
    assert not math.isnan(result["exact_match,flexible-extract"])

