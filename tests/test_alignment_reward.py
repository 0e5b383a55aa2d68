"""A reward model (TRL RewardTrainer) from the SFT model: held-out pairwise accuracy rises and beats length alone.

The pairs come from the synthetic generator, chosen so that answer length explains nothing: equal thirds of "style"
pairs (the rejected answer adds a redundant "The answer is N." line, so it is longer), "slip" pairs whose correct
answer is the longer one (e.g. 13 against a slipped 10) and slip pairs of equal token length. Preferring the longer
or the shorter answer then scores 0.5; the model has to read the content. They are written to JSON Lines files, so
the run also goes through the "any prompt/chosen/rejected file" path."""

import json
import random

import datasets
import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig

from hfscratch.alignment.config import AlignmentDataConfig, AlignmentModelConfig
from hfscratch.alignment.datasets import synthetic_dataset
from hfscratch.alignment.metrics import reward_input_ids, reward_metrics
from hfscratch.alignment.reward import run_reward
from hfscratch.cli import run_command
from hfscratch.data.synthetic_math import SyntheticMathConfig
from tests.alignment_setup import CPU_TRAINER, EASY, SEED, root, sft_run


def length_balanced_pairs(tokenizer, split: str, n: int, path) -> str:
    """n pairs in equal thirds (style: chosen shorter; slip: chosen longer; slip: equal length), shuffled."""
    synthetic = SyntheticMathConfig(**{**EASY, "operations": list(EASY["operations"])}, seed=5)
    groups: dict[tuple, list] = {}
    for row in synthetic_dataset("dpo", 10 * n, split, synthetic, style_fraction=0.5):
        diff = len(reward_input_ids(tokenizer, row["prompt"], row["chosen"])) - len(reward_input_ids(tokenizer, row["prompt"], row["rejected"]))
        groups.setdefault((row["pair_kind"], (diff > 0) - (diff < 0)), []).append(row)
    third = n // 3
    rows = groups[("style", -1)][:third] + groups[("slip", 1)][:third] + groups[("slip", 0)][: n - 2 * third]
    assert len(rows) == n, {k: len(v) for k, v in groups.items()}
    random.Random(0).shuffle(rows)
    datasets.Dataset.from_list(rows).to_json(path)
    return str(path)


@pytest.fixture(scope="module")
def pair_files():
    tokenizer = AutoTokenizer.from_pretrained(sft_run()["final"])
    return (length_balanced_pairs(tokenizer, "train", 480, root() / "reward_train.jsonl"),
            length_balanced_pairs(tokenizer, "heldout", 120, root() / "reward_heldout.jsonl"))


def reward_args(name: str, **overrides) -> RewardConfig:
    kwargs = dict(output_dir=str(root() / name), max_steps=40, per_device_train_batch_size=16, learning_rate=1e-3,
                  lr_scheduler_type="constant", logging_steps=10, max_length=256,
                  seed=SEED, **CPU_TRAINER)
    return RewardConfig(**{**kwargs, **overrides})


def test_reward_model_learns_beyond_length_and_reloads(pair_files, capfd):
    train, held = pair_files
    start = sft_run()["final"]
    capfd.readouterr()
    data = AlignmentDataConfig(dataset_name=train, eval_dataset_name=held, eval_samples=120)
    result = run_reward(AlignmentModelConfig(model_name_or_path=start), data, reward_args("reward"))
    before, after = result["before"], result["after"]
    # Loading the causal LM as a classifier reports nothing: the new score head and dropped lm_head are by design.
    assert not any(word in capfd.readouterr().err for word in ("LOAD REPORT", "newly initialized", "MISSING", "UNEXPECTED"))
    print({k: (round(before[k], 3), round(after[k], 3)) for k in before if isinstance(before[k], float)})  # pytest -s
    # Neither length rule explains these pairs (longer 0.5, shorter 0.5: ties count half) ...
    assert abs(after["length_baseline_accuracy"] - 0.5) < 0.05 and after["length_baseline_accuracy"] == before["length_baseline_accuracy"]
    # ... while the trained reward model ranks most of them right (before: the new head is random). Measured with
    # seed 0 (120 held-out pairs): see benchmarks/RESULTS_alignment.md, "Reward model".
    assert after["accuracy"] >= max(before["accuracy"] + 0.05, 0.75), (before, after)
    assert after["accuracy"] >= max(after["length_baseline_accuracy"], after["shorter_baseline_accuracy"]) + 0.25, after
    assert after["margin"] > before["margin"] + 1.0, (before, after)
    assert result["adapter"] is False and result["length_unit"] == "tokens"

    # The saved folder is a plain sequence-classification checkpoint with its tokenizer: the same scores.
    final = result["final"]
    model = AutoModelForSequenceClassification.from_pretrained(final)
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    reloaded = reward_metrics(model, AutoTokenizer.from_pretrained(final), datasets.Dataset.from_json(held), max_length=256)
    assert {k: reloaded[k] for k in after} == pytest.approx(after, abs=1e-5)
    # The file's pair_kind column (dropped for the run) splits the held-out accuracy by kind.
    print({k: round(v, 3) for k, v in reloaded.items() if k.endswith(("_slip", "_style"))})  # pytest -s


def test_reward_model_lora(pair_files):
    train, held = pair_files
    data = AlignmentDataConfig(dataset_name=train, eval_dataset_name=held, eval_samples=120)
    result = run_reward(AlignmentModelConfig(model_name_or_path=sft_run()["final"], use_peft=True), data,
                        reward_args("reward-lora", max_steps=25, learning_rate=2e-3))
    before, after = result["before"], result["after"]
    print({k: (round(before[k], 3), round(after[k], 3)) for k in before if isinstance(before[k], float)})  # pytest -s
    # Measured (seeds 0 / 1): accuracy 0.683 -> 0.850 / 0.517 -> 0.850, margin 0.04 -> 4.07 / 0.01 -> 3.57; a
    # length-only rule scores 0.5 on this set.
    assert result["adapter"] is True and after["accuracy"] >= max(before["accuracy"], 0.8), (before, after)
    assert after["margin"] > before["margin"] + 1.0 and after["accuracy"] > after["length_baseline_accuracy"] + 0.2, (before, after)
    adapter = json.loads((root() / "reward-lora" / "final" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]  # the new head trains in full
    # The adapter loads on its base through transformers' PEFT integration and scores as it did in memory.
    model = AutoModelForSequenceClassification.from_pretrained(result["final"], num_labels=1)
    reloaded = reward_metrics(model, AutoTokenizer.from_pretrained(result["final"]), datasets.Dataset.from_json(held), max_length=256)
    assert {k: reloaded[k] for k in after} == pytest.approx(after, abs=1e-5)


def test_pairs_without_rejected_side_are_one_line_errors(tmp_path, capsys):
    prompt = [{"role": "user", "content": "What is 2 + 3?"}]
    no_column = tmp_path / "chosen_only.jsonl"
    no_column.write_text(json.dumps({"prompt": prompt, "chosen": [{"role": "assistant", "content": "#### 5"}]}) + "\n")
    empty = tmp_path / "empty_rejected.jsonl"
    empty.write_text("".join(json.dumps({"prompt": prompt, "chosen": "#### 5", "rejected": rejected}) + "\n" for rejected in ("#### 6", "")))
    for path, words in ((no_column, "rejected"), (empty, "1 of 2 pairs")):
        code = run_command("reward", ["--model_name_or_path", sft_run()["final"], "--dataset_name", str(path), "--eval_samples", "0",
                                      "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--report_to", "none"])
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]  # not progress bars
        assert code == 2 and len(errors) == 1 and words in errors[0], errors
