"""The offline task copies: GSM8K reproduces lm-eval's own `gsm8k`, every local task loads, bad input fails in one line."""

from pathlib import Path

import datasets
import pytest

from hfscratch.errors import ConfigError, DataError

LM_EVAL_GSM8K_DIR = Path(__import__("lm_eval").__file__).parent / "tasks" / "gsm8k"


@pytest.fixture(scope="module")
def local_tasks_dir():
    from hfscratch.evaluation import default_tasks_dir

    return default_tasks_dir()


def _gsm8k_pair(shared_data, local_tasks_dir, monkeypatch):
    """lm-eval's `gsm8k` (its YAML, with load_dataset answering from the local rows) and our `gsm8k_local`."""
    from lm_eval.tasks import TaskManager

    local_rows = {
        split: datasets.Dataset.from_json(str(shared_data / "gsm8k" / f"{split}.jsonl")) for split in ("train", "test")
    }
    requested = []

    def offline_load_dataset(path, name=None, **kwargs):
        requested.append((path, name))
        return datasets.DatasetDict(local_rows)

    monkeypatch.setattr("lm_eval.api.task.datasets.load_dataset", offline_load_dataset)
    stock = TaskManager(include_path=str(LM_EVAL_GSM8K_DIR), include_defaults=False).load(["gsm8k"])["tasks"]["gsm8k"]
    assert requested == [("openai/gsm8k", "main")]  # the stock task asked for the Hub dataset we stood in for
    ours = TaskManager(include_path=str(local_tasks_dir), include_defaults=False,
                       metadata={"data_dir": str(shared_data)}).load(["gsm8k_local"])["tasks"]["gsm8k_local"]
    return stock, ours


def test_local_gsm8k_reproduces_lm_eval_gsm8k(shared_data, local_tasks_dir, monkeypatch):
    stock, ours = _gsm8k_pair(shared_data, local_tasks_dir, monkeypatch)

    # Same task definition apart from the name and the data source.
    stock_config, our_config = stock.dump_config(), ours.dump_config()
    for key in ("task", "tag", "custom_dataset", "metadata"):
        stock_config.pop(key, None)
        our_config.pop(key, None)
    assert our_config == stock_config
    assert ours.config.num_fewshot == stock.config.num_fewshot == 5
    assert ours.config.generation_kwargs["until"] == stock.config.generation_kwargs["until"] == ["Question:", "</s>", "<|im_end|>"]
    assert [f.name for f in ours._filters] == [f.name for f in stock._filters] == ["strict-match", "flexible-extract"]

    # Same rendered 5-shot prompts (few-shot rows drawn by the same seeded sampler from train) and request args.
    for task in (stock, ours):
        task.set_fewshot_seed(1234)
        task.build_all_requests(limit=6, rank=0, world_size=1)
    assert len(ours.instances) == len(stock.instances) == 6
    for mine, theirs in zip(ours.instances, stock.instances):
        assert mine.args == theirs.args
        assert mine.doc == theirs.doc
        assert mine.args[0].count("Question:") == 6 and mine.args[0].endswith("\nAnswer:")
    few_shot_rows = ours.sampler.sample(5, eval_doc=ours.eval_docs[0])
    assert len(few_shot_rows) == 5 and all(r in ours.fewshot_docs() for r in few_shot_rows)

    # Same filters and metric on the same model outputs (one correct with ####, one loose number, one wrong).
    doc = ours.eval_docs[0]
    gold = doc["answer"].split("#### ")[-1]
    generations = [f"She makes {gold} dollars.\n#### {gold}", f"The answer is ${gold}.", "#### 7"]
    for generation in generations:
        scores = []
        for task in (stock, ours):
            for instance in task.instances:
                instance.resps = [[generation]]
                instance.filtered_resps = {}
            task.apply_filters()
            scores.append({name: task.process_results(doc, [task.instances[0].filtered_resps[name]]) for name in ("strict-match", "flexible-extract")})
        assert scores[0] == scores[1]
    assert scores[0]["flexible-extract"]["exact_match"] == 0.0  # the last generation ("#### 7") is wrong


@pytest.mark.parametrize("name,fields", [
    ("hellaswag_local", 4), ("arc_easy_local", 4), ("arc_challenge_local", 4), ("piqa_local", 2), ("boolq_local", 2),
    ("winogrande_local", 2), ("openbookqa_local", 4), ("lambada_openai_local", None), ("gsm8k_cot_zeroshot_local", None),
    ("gsm8k_chat_local", None),
])
def test_every_local_task_loads_offline(shared_data, local_tasks_dir, name, fields):
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(local_tasks_dir), include_defaults=False,
                       metadata={"data_dir": str(shared_data)}).load([name])["tasks"][name]
    doc = task.eval_docs[0]
    if fields is not None:
        choices = task.doc_to_choice(doc)
        assert len(choices) == fields and all(isinstance(c, str) and c for c in choices)
        assert 0 <= (task.doc_to_text(doc) if name == "winogrande_local" else task.doc_to_target(doc)) < fields
    prompt = task.doc_to_text(doc)
    if name in ("arc_easy_local", "piqa_local", "boolq_local"):
        assert prompt.endswith("?\nAnswer:") or prompt.endswith("\nAnswer:")
        assert not prompt.startswith("Passage:")
    if name == "lambada_openai_local":
        target = task.doc_to_target(doc)
        assert target.startswith(" ") and " " not in target[1:]


# ---------------------------------------------------------------- bad input


def test_unknown_task_lists_close_matches(shared_data):
    from hfscratch.evaluation.tasks import plan_tasks

    with pytest.raises(ConfigError, match="unknown task 'hellaswag_locl'.*hellaswag_local"):
        plan_tasks(["hellaswag_locl"], data_dir=shared_data)


def test_missing_data_file_names_file_and_format(tmp_path, local_tasks_dir):
    from hfscratch.evaluation import evaluate_model

    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "train.jsonl").write_text('{"question": "1+1?", "answer": "2\\n#### 2"}\n')
    with pytest.raises(DataError, match=r"gsm8k/test\.jsonl.*`question` and `answer`"):
        evaluate_model("unused-model", tasks=["gsm8k_local"], data_dir=tmp_path)
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "no answer field"}\n')
    with pytest.raises(DataError, match=r"test\.jsonl:1 lacks field\(s\) \['answer'\]"):
        evaluate_model("unused-model", tasks=["gsm8k_local"], data_dir=tmp_path)


def test_local_task_without_data_dir_says_how_to_fix(monkeypatch):
    from hfscratch.evaluation.tasks import plan_tasks

    monkeypatch.delenv("HFSCRATCH_EVAL_DATA", raising=False)
    with pytest.raises(DataError, match="--data_dir"):
        plan_tasks(["gsm8k_local"], data_dir=None)


def test_malformed_task_yaml_is_reported_with_its_file(tmp_path, shared_data):
    from hfscratch.evaluation.tasks import plan_tasks

    (tmp_path / "broken.yaml").write_text("task: broken\noutput_type: generate_until\ndoc_to_text: \"unterminated\n")
    with pytest.raises(ConfigError, match=r"malformed task YAML .*broken\.yaml line \d+"):
        plan_tasks(["gsm8k_local"], data_dir=shared_data, include_path=[tmp_path])
    (tmp_path / "broken.yaml").write_text("task: broken\noutput_type: generate\n")
    with pytest.raises(ConfigError, match=r"output_type 'generate' is not one of"):
        plan_tasks(["gsm8k_local"], data_dir=shared_data, include_path=[tmp_path])


def test_prompt_longer_than_context_is_refused(tmp_path, shared_data, tiny_tokenizer):
    from hfscratch import HfscratchForCausalLM
    from hfscratch.evaluation import evaluate_model
    from tests.helpers import tiny_config

    # gsm8k_local's 5-shot prompt alone is longer than 128 tokens: no generation budget can help.
    model = HfscratchForCausalLM(tiny_config(tiny_tokenizer, max_position_embeddings=128, num_hidden_layers=1))
    with pytest.raises(ConfigError, match=r"task gsm8k_local: its longest prompt \(\d+ tokens, few-shot .*\) is longer than the "
                                          r"128-token context \(max_position_embeddings\); use fewer few-shot examples \(--num_fewshot 0\)"):
        evaluate_model(model, tiny_tokenizer, tasks=["gsm8k_local"], data_dir=shared_data, limit=1, verbose=False)


def test_generation_budget_is_fitted_to_the_context(capsys, shared_data, tiny_tokenizer):
    """gsm8k_chat_local asks for 512 new tokens; in a 256-token model it gets what its longest prompt leaves."""
    import copy

    from hfscratch import HfscratchForCausalLM
    from hfscratch.evaluation import evaluate_model
    from hfscratch.evaluation.runner import MIN_FITTED_GEN_TOKS, fit_generation_budget
    from hfscratch.tokenizer import ensure_chat_template
    from tests.helpers import tiny_config

    assert fit_generation_budget("t", longest_prompt=100, requested=64, context=256) == 64  # fits: unchanged
    assert fit_generation_budget("t", longest_prompt=100, requested=512, context=256) == 156
    with pytest.raises(ConfigError, match=r"task t: .*leaves only 10 of the 256-token context \(--max_length\) for the answer"):
        fit_generation_budget("t", longest_prompt=246, requested=512, context=256, context_source="--max_length")
    assert fit_generation_budget("t", longest_prompt=250, requested=4, context=256) == 4 < MIN_FITTED_GEN_TOKS

    chat_tok = ensure_chat_template(copy.deepcopy(tiny_tokenizer))
    model = HfscratchForCausalLM(tiny_config(chat_tok, max_position_embeddings=256, num_hidden_layers=1))
    model.generation_config.max_new_tokens = 8  # saved checkpoints carry one (pretraining writes 256): it must not cap the budget
    calls, generate = [], model.generate

    def recording_generate(*args, **kwargs):  # what lm-eval asks of the model
        calls.append((kwargs["input_ids"].shape[1], kwargs["max_length"], model.generation_config.max_new_tokens))
        return generate(*args, **kwargs)

    model.generate = recording_generate
    capsys.readouterr()
    results = evaluate_model(model, chat_tok, tasks=["gsm8k_chat_local"], limit=2, data_dir=shared_data,
                             apply_chat_template=True, log_samples=True, bootstrap_iters=0)
    # the prompts as the model saw them, measured here independently of the runner
    samples = results["samples"]["gsm8k_chat_local"]
    longest = max(len(chat_tok(s["arguments"][0][0], add_special_tokens=False)["input_ids"]) for s in samples)
    fitted = 256 - longest
    assert 0 < fitted < 512
    assert results["hfscratch"]["generation_budget"] == {"gsm8k_chat_local": {
        "max_gen_toks": fitted, "requested_max_gen_toks": 512, "longest_prompt_tokens": longest, "context": 256, "lowered": True}}
    assert all(s["arguments"][0][1]["max_gen_toks"] == fitted for s in samples)  # what generation was called with
    assert results["configs"]["gsm8k_chat_local"]["generation_kwargs"]["max_gen_toks"] == fitted
    # generation was bounded by prompt + fitted budget (within the context), not by the saved max_new_tokens,
    # which is set aside during the run and restored after it
    assert calls and all(max_length - prompt == fitted and max_length <= 256 and saved is None
                         for prompt, max_length, saved in calls), (calls, fitted)
    assert model.generation_config.max_new_tokens == 8
    err = capsys.readouterr().err
    info = [line for line in err.splitlines() if "max_gen_toks" in line]
    assert info == [f"info: gsm8k_chat_local: max_gen_toks 512 -> {fitted}, so its longest prompt ({longest} tokens) "
                    "fits the 256-token context (max_position_embeddings)"], err


def test_cli_prints_one_line_error(capsys, shared_data):
    from hfscratch.cli import main

    code = main(["eval", "some/missing-model-folder/x", "--tasks", "arc_easy_local", "--data_dir", str(shared_data)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: model folder some/missing-model-folder/x does not exist") and "\n" not in err
