"""Shared plumbing of `hfscratch sft|dpo|grpo`: dataclass fields become options (so --help lists them), and the
values go back through `parse_recipe_args`, so the YAML and the command line are checked by one parser."""

from __future__ import annotations

import argparse

import trl

from ..recipe_args import add_dataclass_options, options_to_argv, packaged_config, parse_recipe_args
from .config import AlignmentDataConfig, AlignmentModelConfig
from .dpo import run_dpo
from .grpo import run_grpo
from .sft import run_sft

RUNNERS = {"sft": run_sft, "dpo": run_dpo, "grpo": run_grpo}


def add_dataclass_arguments(parser: argparse.ArgumentParser, dataclass_types, trainer_fields: tuple[str, ...]) -> None:
    # TRL configs have ~200 fields: list the ones people tune here; any other still works from YAML.
    add_dataclass_options(parser, dataclass_types, "YAML config: a path, or a shipped config by name (e.g. sft_synthetic_math); options override it",
                          shown=lambda dtype, f: not dtype.__module__.startswith("trl") or f.name in trainer_fields)


COMMON_TRAINER_FIELDS = ("output_dir", "max_steps", "num_train_epochs", "learning_rate", "per_device_train_batch_size",
                         "gradient_accumulation_steps", "lr_scheduler_type", "warmup_ratio", "logging_steps", "save_steps",
                         "seed", "bf16", "report_to", "max_length", "gradient_checkpointing")


def run_stage(stage: str, args: argparse.Namespace, default_config: str) -> int:
    config_cls = stage_config_class(stage)
    types = [AlignmentModelConfig, AlignmentDataConfig, config_cls]
    argv = options_to_argv(args, types)
    if "--config" not in argv:
        argv = ["--config", str(packaged_config(default_config)), *argv]
    model_args, script_args, training_args = parse_recipe_args(types, argv, prog=f"hfscratch {stage}")
    RUNNERS[stage](model_args, script_args, training_args)
    return 0


def stage_config_class(stage: str):
    return {"sft": trl.SFTConfig, "dpo": trl.DPOConfig, "grpo": trl.GRPOConfig}[stage]
