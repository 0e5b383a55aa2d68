"""GRPO with TRL and the verifiable math reward: held-out reward rises over the SFT starting point."""

from pathlib import Path

from trl import GRPOConfig

from hfscratch.alignment.config import GRPOModelConfig
from hfscratch.alignment.grpo import run_grpo
from tests.alignment_setup import CPU_TRAINER, root, script_args, sft_run


def test_grpo_raises_heldout_reward():
    # The SFT model answers in the '#### N' format and stops, but at temperature 1 it is right less often than
    # greedily: groups of 8 samples mix right and wrong answers, which is GRPO's learning signal. Held-out prompts
    # come from the generator's held-out split; the sampled reward (8 samples per prompt at temperature 1, seeded)
    # is the quantity GRPO optimises, greedy exact-match is reported next to it.
    start = Path(sft_run()["final"])
    args = GRPOConfig(output_dir=str(root() / "grpo"), max_steps=GRPO_STEPS, per_device_train_batch_size=64, num_generations=8,
                      max_completion_length=40, learning_rate=GRPO_LR, lr_scheduler_type="constant", logging_steps=4,
                      beta=0.0, temperature=1.0, seed=0, **CPU_TRAINER)
    result = run_grpo(GRPOModelConfig(model_name_or_path=str(start)), script_args(synthetic_train_size=640, eval_num_samples=8), args)
    before, after = result["before"], result["after"]
    # Measured (64 held-out prompts; seeds 0 / 1 / 2): sampled reward (8 per prompt, T=1) 0.516 -> 0.611 / 0.453 ->
    # 0.544 / 0.429 -> 0.492, sampled exact-match 0.318 -> 0.412 / 0.256 -> 0.348 / 0.234 -> 0.295, greedy exact-match
    # 0.406 -> 0.500 / 0.531 -> 0.516 / 0.359 -> 0.453.
    print({k: (round(before[k], 3), round(after[k], 3)) for k in before if isinstance(before[k], float)})  # pytest -s
    assert after["sampled_reward_t1"] > before["sampled_reward_t1"] + 0.015, (before, after)
    assert after["sampled_exact_match_t1"] > before["sampled_exact_match_t1"], (before, after)
    # Greedy decoding only shows the argmax: it moves by a few problems in 64 either way (seed 1: 34 -> 33), so this
    # asserts no fall beyond one problem.
    assert after["exact_match"] >= before["exact_match"] - 1 / 64 and after["mean_reward"] >= before["mean_reward"] - 1.2 / 64, (before, after)
    assert after["eos_rate"] >= 0.95 and after["format_rate"] >= 0.95, (before, after)


GRPO_STEPS, GRPO_LR = 20, 1e-4  # 20 steps x (8 prompts x 8 samples); 4 samples x 4 prompts (the old setting) barely moved
