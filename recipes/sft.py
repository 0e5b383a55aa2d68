"""supervised fine-tuning (TRL SFTTrainer), alignment-handbook style.

    accelerate launch recipes/sft.py                                   # recipes/configs/sft_synthetic_math.yaml
    accelerate launch recipes/sft.py --config recipes/configs/sft_synthetic_math_lora.yaml
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 recipes/sft.py # 2 CPU processes (DDP over gloo)
    accelerate launch --config_file recipes/accelerate/<ddp|zero2|zero3|fsdp2>.yaml recipes/sft.py --config recipes/configs/sft_gsm8k_gpu.yaml

Held-out metrics are measured before and after training and written to <output_dir>/alignment_results.json
(+ a PNG); the model (or LoRA adapter) goes to <output_dir>/final. `hfscratch sft` runs the same `main` (hfscratch/alignment/cli.py).
"""

import sys

from hfscratch.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("sft", sys.argv[1:]))
