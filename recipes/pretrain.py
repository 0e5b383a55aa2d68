"""Pretrain a causal LM from scratch: the project's main job.

    accelerate launch recipes/pretrain.py                      # tiny CPU default (recipes/configs/pretrain_tiny.yaml)
    accelerate launch recipes/pretrain.py --max_steps 50       # any field can be overridden
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/pretrain.py --config recipes/configs/pretrain_gpt2_124m.yaml
    accelerate launch recipes/pretrain.py --resume_from_checkpoint latest

Data preparation (tokenizer + packed blocks) runs first if its output is missing, then training with
validation, checkpoints and tensorboard logs, then `outputs/<run_name>/final/` is written: a save_pretrained
folder with tokenizer, generation config, model card and loss curve. The logic lives in `hfscratch.training`.
"""

import sys

from hfscratch.recipe_args import packaged_config, parse_recipe_args, run_recipe
from hfscratch.training import DataArguments, ModelConfig, TrainConfig, pretrain, print_summary

DEFAULT_CONFIG = packaged_config("pretrain_tiny")


def main(argv: list[str]) -> None:
    if "--config" not in argv:
        argv = ["--config", str(DEFAULT_CONFIG), *argv]
    model_args, data_args, training_args = parse_recipe_args([ModelConfig, DataArguments, TrainConfig], argv, prog="recipes/pretrain.py")
    result = pretrain(model_args, data_args, training_args)
    print_summary(result)


if __name__ == "__main__":
    run_recipe(main, sys.argv[1:])
