"""RLHF (TRL GRPOTrainer against a learned reward model), alignment-handbook style.

    accelerate launch recipes/rlhf.py                                   # recipes/configs/rlhf_synthetic_math.yaml
    accelerate launch recipes/rlhf.py --reward_model_name_or_path outputs/reward-synthetic-math/final --beta 0.05

The policy starts from an SFT checkpoint; every sampled completion is scored by the reward model (`hfscratch reward`),
optionally plus the verifiable math reward, and a KL term (`beta`) keeps the policy near its start. Held-out learned
reward, exact match, completion length and an independent judge (a second reward model, if given) are measured
before and after and written to <output_dir>/alignment_results.json (+ a PNG); the policy goes to <output_dir>/final.
`hfscratch rlhf` runs the same `main` (hfscratch/alignment/cli.py).
"""

import sys

from hfscratch.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("rlhf", sys.argv[1:]))
