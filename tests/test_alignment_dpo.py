"""DPO (+NLL, RPO) with TRL from the SFT model: held-out chosen-minus-rejected margin and win rate rise.

The SFT set mixes two solution styles (concise GSM8K format, and the same working with a redundant closing line
"The answer is N."), so the SFT model has no preference between them. Half of the preference pairs prefer the
concise correct solution over the restated one ("style"), half prefer it over a solution with an arithmetic slip ("slip").
Held-out pairs come from the generator's held-out split (disjoint from training by question hash)."""

from trl import DPOConfig

from hfscratch.alignment.config import AlignmentModelConfig
from hfscratch.alignment.dpo import run_dpo
from tests.alignment_setup import CPU_TRAINER, root, script_args, sft_run


def test_dpo_raises_heldout_margin_and_win_rate():
    start = sft_run()["final"]
    args = DPOConfig(output_dir=str(root() / "dpo"), max_steps=30, per_device_train_batch_size=16, learning_rate=3e-4,
                     loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0],
                     lr_scheduler_type="constant", logging_steps=10, beta=0.1,
                     max_length=256, seed=0, **CPU_TRAINER)
    result = run_dpo(AlignmentModelConfig(model_name_or_path=start), script_args(synthetic_train_size=480, eval_samples=128), args)
    before, after = result["before"], result["after"]
    assert result["reference"] == "explicit frozen copy"
    # Measured (128 held-out pairs, 64 of each kind; seed 0, seeds 1 and 2 alike): margin 4.80 -> 29.64, win rate
    # 0.453 -> 0.953 (style 0.078 -> 1.000, slip 0.828 -> 0.906), exact-match 0.414 -> 0.578.
    print({k: (round(before[k], 3), round(after[k], 3)) for k in before if isinstance(before[k], float)})  # pytest -s
    assert after["margin"] > before["margin"] + 1.0, (before, after)
    # The SFT model saw both styles, so it does not reliably prefer the concise one: headroom on the style half.
    assert before["win_rate"] < 0.9 and before["win_rate_style"] < 0.9, before
    assert after["win_rate"] >= before["win_rate"] + 0.05, (before, after)
    assert after["win_rate_style"] >= before["win_rate_style"] + 0.15, (before, after)
    # The correctness pairs are not what rises here (plain sigmoid DPO lowered them, see the results file); with the
    # NLL term they stay within a few pairs of the start (measured +5, -1 and 0 of 64 with seeds 0, 1, 2).
    assert after["win_rate_slip"] >= before["win_rate_slip"] - 5 / 64, (before, after)
    assert after["chosen_logp"] > before["chosen_logp"], (before, after)  # the chosen answers stay likely (RPO's point)
    # Greedy answers to the same held-out questions: exact-match does not fall by more than a few problems.
    assert after["exact_match"] >= before["exact_match"] - 6 / 128, (before, after)
    assert after["eos_rate"] >= 0.95 and after["restated_rate"] <= before["restated_rate"], (before, after)
