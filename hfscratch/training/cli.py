"""`hfscratch pretrain`: the same job as `accelerate launch recipes/pretrain.py`.

The dataclass fields become options here only so `--help` lists them; values are handed back to
`parse_recipe_args` as strings, so YAML and command line are checked by one parser with one set of errors.
Multi-process runs go through `accelerate launch` (or torchrun); this command runs in the current process.
"""

from __future__ import annotations

import argparse

from ..recipe_args import add_dataclass_options, options_to_argv, packaged_config, parse_recipe_args
from .config import DataArguments, ModelConfig, TrainConfig
from .loop import pretrain
from .summary import print_summary

ARGUMENT_TYPES = [ModelConfig, DataArguments, TrainConfig]
DEFAULT_CONFIG = packaged_config("pretrain_tiny")  # the same default run as `accelerate launch recipes/pretrain.py`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_options(parser, ARGUMENT_TYPES, "YAML config (e.g. recipes/configs/pretrain_tiny.yaml); options below override it")


def namespace_to_argv(args: argparse.Namespace) -> list[str]:
    return options_to_argv(args, ARGUMENT_TYPES)


def run(args: argparse.Namespace) -> int:
    argv = namespace_to_argv(args)
    if "--config" not in argv:
        argv = ["--config", str(DEFAULT_CONFIG), *argv]
    model_args, data_args, training_args = parse_recipe_args(ARGUMENT_TYPES, argv, prog="hfscratch pretrain")
    print_summary(pretrain(model_args, data_args, training_args))
    return 0


__all__ = ["add_arguments", "run", "namespace_to_argv"]
