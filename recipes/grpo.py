"""GRPO with the verifiable math reward (TRL GRPOTrainer), alignment-handbook style.

    accelerate launch recipes/grpo.py                                   # recipes/configs/grpo_synthetic_math.yaml
    accelerate launch recipes/grpo.py --use_peft true --learning_rate 5e-4   # LoRA (PEFT) adapter instead of all weights
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 recipes/grpo.py # 2 CPU processes (DDP over gloo)
    accelerate launch --config_file recipes/accelerate/<ddp|zero2|zero3|fsdp2>.yaml recipes/grpo.py --config recipes/configs/grpo_gsm8k_gpu.yaml

Held-out metrics are measured before and after training and written to <output_dir>/alignment_results.json
(+ a PNG); the model (or LoRA adapter) goes to <output_dir>/final. `hfscratch grpo` runs the same `main` (hfscratch/alignment/cli.py).
"""

import sys

from hfscratch.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("grpo", sys.argv[1:]))
