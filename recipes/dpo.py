"""DPO (TRL DPOTrainer), alignment-handbook style.

    accelerate launch recipes/dpo.py                                   # recipes/configs/dpo_synthetic_math.yaml
    accelerate launch recipes/dpo.py --config recipes/configs/dpo_synthetic_math_lora.yaml
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 recipes/dpo.py # 2 CPU processes (DDP over gloo)
    accelerate launch --config_file recipes/accelerate/<ddp|zero2|zero3|fsdp2>.yaml recipes/dpo.py --config recipes/configs/dpo_hh_rlhf_gpu.yaml

Held-out metrics are measured before and after training and written to <output_dir>/alignment_results.json
(+ a PNG); the model (or LoRA adapter) goes to <output_dir>/final. The logic lives in hfscratch.alignment.
"""

import sys

from trl import DPOConfig

from hfscratch.alignment.config import AlignmentDataConfig, AlignmentModelConfig
from hfscratch.alignment.dpo import run_dpo
from hfscratch.recipe_args import packaged_config, parse_recipe_args, run_recipe

DEFAULT_CONFIG = packaged_config("dpo_synthetic_math")


def main(argv: list[str]) -> None:
    if "--config" not in argv:
        argv = ["--config", str(DEFAULT_CONFIG), *argv]
    model_args, script_args, training_args = parse_recipe_args([AlignmentModelConfig, AlignmentDataConfig, DPOConfig], argv,
                                                                prog="recipes/dpo.py")
    run_dpo(model_args, script_args, training_args)


if __name__ == "__main__":
    run_recipe(main, sys.argv[1:])
