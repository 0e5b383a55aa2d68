"""Reward model (TRL RewardTrainer), alignment-handbook style.

    accelerate launch recipes/reward.py                                 # recipes/configs/reward_synthetic_math.yaml
    accelerate launch recipes/reward.py --config recipes/configs/reward_hh_rlhf.yaml
    accelerate launch recipes/reward.py --use_peft true                 # LoRA (task SEQ_CLS; the score head trains in full)

The starting causal LM's backbone gets a new scalar `score` head (AutoModelForSequenceClassification, num_labels=1).
Held-out pairwise accuracy, margin and a length-only baseline are measured before and after training and written to
<output_dir>/alignment_results.json (+ a PNG); the model (or LoRA adapter) goes to <output_dir>/final.
`hfscratch reward` runs the same `main` (hfscratch/alignment/cli.py).
"""

import sys

from hfscratch.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("reward", sys.argv[1:]))
