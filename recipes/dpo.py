"""DPO (TRL DPOTrainer), alignment-handbook style.

    accelerate launch recipes/dpo.py                                   # recipes/configs/dpo_synthetic_math.yaml
    accelerate launch recipes/dpo.py --config recipes/configs/dpo_synthetic_math_lora.yaml
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 recipes/dpo.py # 2 CPU processes (DDP over gloo)
    accelerate launch --config_file recipes/accelerate/<ddp|zero2|zero3|fsdp2>.yaml recipes/dpo.py --config recipes/configs/dpo_hh_rlhf_gpu.yaml

Held-out metrics are measured before and after training and written to <output_dir>/alignment_results.json
(+ a PNG); the model (or LoRA adapter) goes to <output_dir>/final. `hfscratch dpo` runs the same `main` (hfscratch/alignment/cli.py).
"""

import sys

from hfscratch.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("dpo", sys.argv[1:]))
