"""GRPO with TRL and the verifiable math reward: trains on the reward, keeps format, eos and held-out reward."""

from pathlib import Path

from trl import GRPOConfig

from hfscratch.alignment.config import ModelArguments
from hfscratch.alignment.grpo import run_grpo
from tests.alignment_setup import root, script_args, sft_run


def test_grpo_trains_on_the_verifiable_reward_without_losing_heldout_reward():
    # The SFT model answers in the '#### N' format and stops; 4 samples per prompt at temperature 1 give groups
    # with mixed rewards, so GRPO gets a learning signal. At this scale (330k parameters, 16 steps) GRPO does not
    # reliably RAISE held-out greedy reward (measured: +0.05/-0.02/+0.09 over seeds 0/1/2, within noise on 64 prompts;
    # benchmarks/RESULTS_alignment.md explains why), so this asserts what is stable: the policy is updated on the
    # reward, keeps the format and eos, and held-out reward does not fall by more than 2 problems in 64 (a too high
    # learning rate fails this: on the 1.1M default model lr 1e-4 with 4 samples took exact-match 0.37 -> 0.14).
    start = Path(sft_run()["final"])
    args = GRPOConfig(output_dir=str(root() / "grpo"), max_steps=16, per_device_train_batch_size=16, num_generations=4,
                      max_completion_length=40, learning_rate=1e-4, lr_scheduler_type="constant", logging_steps=4,
                      report_to="none", save_strategy="no", beta=0.0, temperature=1.0, seed=0, use_cpu=True, disable_tqdm=True)
    result = run_grpo(ModelArguments(model_name_or_path=str(start)), script_args(synthetic_train_size=320), args)
    before, after = result["before"], result["after"]
    assert after["eos_rate"] >= 0.95 and after["format_rate"] >= 0.95, (before, after)
    assert after["mean_reward"] >= before["mean_reward"] - 2 / 64, (before, after)
    assert after["answer_loglik"] != before["answer_loglik"]  # the weights moved
