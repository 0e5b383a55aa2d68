"""GRPO with the verifiable math reward (TRL GRPOTrainer), alignment-handbook style.

    accelerate launch recipes/grpo.py                                   # recipes/configs/grpo_synthetic_math.yaml
    accelerate launch recipes/grpo.py --use_peft true --learning_rate 5e-4   # LoRA (PEFT) adapter instead of all weights
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 recipes/grpo.py # 2 CPU processes (DDP over gloo)
    accelerate launch --config_file recipes/accelerate/<ddp|zero2|zero3|fsdp2>.yaml recipes/grpo.py --config recipes/configs/grpo_gsm8k_gpu.yaml

Held-out metrics are measured before and after training and written to <output_dir>/alignment_results.json
(+ a PNG); the model (or LoRA adapter) goes to <output_dir>/final. The logic lives in hfscratch.alignment.
"""

import sys

from trl import GRPOConfig

from hfscratch.alignment.config import AlignmentDataConfig, AlignmentModelConfig
from hfscratch.alignment.grpo import run_grpo
from hfscratch.recipe_args import packaged_config, parse_recipe_args, run_recipe

DEFAULT_CONFIG = packaged_config("grpo_synthetic_math")


def main(argv: list[str]) -> None:
    if "--config" not in argv:
        argv = ["--config", str(DEFAULT_CONFIG), *argv]
    model_args, script_args, training_args = parse_recipe_args([AlignmentModelConfig, AlignmentDataConfig, GRPOConfig], argv,
                                                                prog="recipes/grpo.py")
    run_grpo(model_args, script_args, training_args)


if __name__ == "__main__":
    run_recipe(main, sys.argv[1:])
