"""RLHF: GRPO from the SFT model against a learned reward model, checked on held-out prompts by what the reward model
was meant to capture (exact match) and by an independent judge (a second reward model on disjoint problems).

Both reward models come from tests/alignment_setup.py: trained from the SFT model on synthetic "slip" pairs (correct
answer chosen, an arithmetic slip rejected), the one RLHF trains against on the generator's train split, the judge on
its held-out split. The held-out prompts are another slice of the held-out split."""

import json
import os
import shutil
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig

from hfscratch.alignment.config import GRPOModelConfig
from hfscratch.alignment.grpo import run_rlhf
from hfscratch.cli import run_command
from tests.alignment_setup import CPU_TRAINER, reward_model_run, root, script_args, sft_run

# In fp32 (tests/alignment_setup.py's CPU_TRAINER): at 1e-4 seed 1's learned reward rose only 0.17 in 20 steps, at 3e-4
# its exact match fell 0.53 -> 0.38; 2e-4 passes every test here with seeds 0, 1 and 2.
RLHF_LR = float(os.environ.get("HFSCRATCH_TEST_RLHF_LR", 2e-4))


def rlhf(name: str, reward_weights: list[float], verifiable: bool) -> dict:
    args = GRPOConfig(output_dir=str(root() / name), max_steps=20, per_device_train_batch_size=64, num_generations=8,
                      max_completion_length=40, learning_rate=RLHF_LR, lr_scheduler_type="constant", logging_steps=5,
                      beta=0.04, temperature=1.0, seed=0, reward_weights=reward_weights, **CPU_TRAINER)
    model = GRPOModelConfig(model_name_or_path=sft_run()["final"], reward_model_name_or_path=reward_model_run("train")["final"],
                            judge_model_name_or_path=reward_model_run("heldout")["final"], verifiable_reward=verifiable)
    return run_rlhf(model, script_args(synthetic_train_size=640, eval_max_new_tokens=40, eval_num_samples=0), args)


def test_rlhf_raises_learned_reward_and_keeps_exact_match():
    # Measured (64 held-out prompts; seeds 0 / 1 / 2): learned reward -0.41 -> 0.45 / -1.54 -> 0.27 / -0.48 -> 0.60,
    # judge -0.75 -> 1.14 / -1.74 -> 0.44 / -0.36 -> -0.04, exact match 0.406 -> 0.578 / 0.531 -> 0.516 / 0.359 -> 0.406,
    # completion tokens 34.1 -> 24.7 (seed 0): the restated "The answer is N." line goes (both reward models learned
    # from pairs without it, so they score it low; it carries no answer, so exact match does not care).
    result = rlhf("rlhf", [1.0, 0.2, 0.2], verifiable=True)
    before, after = result["before"], result["after"]
    print({k: (round(before[k], 3), round(after[k], 3)) for k in before if isinstance(before[k], float)})  # pytest -s
    assert after["learned_reward"] > before["learned_reward"] + 0.5, (before, after)
    assert after["judge_reward"] > before["judge_reward"] + 0.2, (before, after)
    assert after["exact_match"] >= before["exact_match"] - 1 / 64, (before, after)  # one problem of 64: noise
    assert after["eos_rate"] >= 0.95, (before, after)
    saved = json.loads((Path(result["final"]).parent / "alignment_results.json").read_text())
    assert saved["stage"] == "rlhf" and saved["reward_model"] == reward_model_run("train")["final"] and saved["beta"] == 0.04
    assert saved["after"] == after and (Path(result["final"]).parent / "rlhf_before_after.png").is_file()
    assert AutoModelForCausalLM.from_pretrained(result["final"]).config.architectures == ["HfscratchForCausalLM"]


def test_reward_model_alone_is_gamed_and_the_checks_show_it():
    # Without the verifiable reward the policy climbs the learned reward while getting fewer answers right: the
    # reward model (held-out accuracy ~0.7-0.85) rewards other things too (seed 0: shorter answers). Exact match is the
    # check that shows it; the judge, trained the same way, shares the bias. Measured (seeds 0 / 1 / 2): learned reward
    # -0.41 -> 1.70 / -1.54 -> 0.45 / -0.48 -> 0.48, exact match 0.406 -> 0.125 / 0.531 -> 0.172 / 0.359 -> 0.219.
    before, after = (r := rlhf("rlhf-rm-only", [1.0], verifiable=False))["before"], r["after"]
    print({k: (round(before[k], 3), round(after[k], 3)) for k in before if isinstance(before[k], float)})  # pytest -s
    assert after["learned_reward"] > before["learned_reward"] + 0.5, (before, after)
    assert after["exact_match"] < before["exact_match"] - 4 / 64, (before, after)  # more than noise: over 4 problems lost


def test_rlhf_on_preference_prompts_scores_with_the_judge_and_length(shared_data):
    # hh-rlhf conversations: prompts without a verifiable answer, so only the reward models and the length statistics
    # can say what changed. The reward models here are the synthetic ones above (same tokenizer, cheap): the test
    # checks the preference-data path (prompts from chosen/rejected transcripts, held-out rows carved from the file's
    # end, long prompts left out) and that RL raises the trained-against score on prompts it never saw. Measured over
    # 21 held-out prompts, 12 steps: learned reward +0.90 / +1.11 / +1.14 (base seed 0; GRPO seeds 0 / 1 / 2), +2.22
    # (base seed 1), +3.41 / +2.50 / +2.36 (base seed 2). 8 steps were too few: on an AVX-512 CPU base seed 0 gained
    # only +0.27 to +0.40 (the same seeds gave other numbers on a CPU without AVX-512). The hh-trained reward models
    # are in RESULTS_alignment.md.
    args = GRPOConfig(output_dir=str(root() / "rlhf-hh"), max_steps=12, per_device_train_batch_size=32, num_generations=8,
                      max_completion_length=32, learning_rate=RLHF_LR, lr_scheduler_type="constant", logging_steps=4,
                      beta=0.04, seed=0, **CPU_TRAINER)
    model = GRPOModelConfig(model_name_or_path=sft_run()["final"], reward_model_name_or_path=reward_model_run("train")["final"],
                            judge_model_name_or_path=reward_model_run("heldout")["final"], verifiable_reward=False)
    data = script_args(dataset_name=str(shared_data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"), max_train_samples=320,
                       eval_from_train=True, eval_samples=64, max_prompt_tokens=160, eval_max_new_tokens=32, eval_num_samples=0)
    result = run_rlhf(model, data, args)
    before, after = result["before"], result["after"]
    print({k: (round(before[k], 3), round(after[k], 3)) for k in before if isinstance(before[k], float)})  # pytest -s
    assert 10 <= after["n"] < 64, after  # conversations over 160 tokens left out, the rest measured
    assert after["learned_reward"] > before["learned_reward"] + 0.3, (before, after)
    assert {"judge_reward", "completion_tokens", "completion_chars", "answer_loglik"} <= after.keys()
    assert "exact_match" not in after  # nothing to verify in a conversation


@pytest.fixture(scope="module")
def mismatched_reward_model(tmp_path_factory) -> str:
    """The train reward model with one token added to its tokenizer: a vocabulary the policy does not share."""
    folder = tmp_path_factory.mktemp("rm") / "other-tokenizer"
    shutil.copytree(reward_model_run("train")["final"], folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(["<not-in-the-policy>"])
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_bad_reward_model_inputs_are_one_line_errors(tmp_path, capsys, mismatched_reward_model, shared_data):
    sft, reward = sft_run()["final"], reward_model_run("train")["final"]
    cases = [(["--reward_model_name_or_path", sft], "not a reward model"),
             (["--model_name_or_path", reward, "--reward_model_name_or_path", reward], "is a reward model"),
             (["--reward_model_name_or_path", mismatched_reward_model], "different tokenizer"),
             (["--reward_model_name_or_path", str(tmp_path / "missing")], "missing"),
             (["--reward_model_name_or_path", "none"], "needs a reward model"),
             (["--reward_model_name_or_path", reward, "--reward_weights", "1.0", "0.5"], "reward_weights has 2 values for 3"),
             (["--reward_model_name_or_path", reward, "--judge_model_name_or_path", reward], "must be a second reward model"),
             (["--reward_model_name_or_path", reward, "--dataset_name", str(shared_data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"),
               "--eval_from_train", "true", "--eval_samples", "8"], "no verifiable answers")]
    for extra, words in cases:
        argv = ["--model_name_or_path", sft, "--dataset_name", "synthetic_math", "--output_dir", str(tmp_path / "out"),
                "--use_cpu", "true", "--report_to", "none", "--max_steps", "1", *extra]
        code = run_command("rlhf", argv)
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and words in errors[0], (extra, errors)
        assert not (tmp_path / "out").exists(), extra  # nothing written before the inputs are checked
