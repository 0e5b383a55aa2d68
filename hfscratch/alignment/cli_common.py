"""Shared plumbing of `hfscratch sft|dpo|grpo`: dataclass fields become options (so --help lists them), and the
values go back through `parse_recipe_args`, so the YAML and the command line are checked by one parser."""

from __future__ import annotations

import argparse
import dataclasses


def _kind(annotation) -> str:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return "list" if text.startswith("list") else "bool" if text.startswith("bool") else "value"


def add_dataclass_arguments(parser: argparse.ArgumentParser, dataclass_types, trainer_fields: tuple[str, ...]) -> None:
    parser.add_argument("--config", default=argparse.SUPPRESS, help="YAML config (see recipes/configs/); options override it")
    for dtype in dataclass_types:
        group = parser.add_argument_group(dtype.__name__)
        for f in dataclasses.fields(dtype):
            # TRL configs have ~200 fields: list the ones people tune here; any other still works from YAML.
            if dtype.__module__.startswith("trl") and f.name not in trainer_fields or f.name == "debug":
                continue
            help_text = str(f.metadata.get("help", "")).split("\n")[0][:150]
            kind = _kind(f.type)
            if kind == "list":
                group.add_argument(f"--{f.name}", nargs="*", default=argparse.SUPPRESS, help=help_text)
            elif kind == "bool":
                group.add_argument(f"--{f.name}", nargs="?", const="true", default=argparse.SUPPRESS, help=help_text)
            else:
                group.add_argument(f"--{f.name}", default=argparse.SUPPRESS, help=help_text)


def namespace_to_argv(args: argparse.Namespace, dataclass_types) -> list[str]:
    argv: list[str] = []
    if getattr(args, "config", None):
        argv += ["--config", args.config]
    for dtype in dataclass_types:
        for f in dataclasses.fields(dtype):
            if hasattr(args, f.name) and f.name != "debug":  # --debug belongs to the hfscratch CLI
                value = getattr(args, f.name)
                argv += [f"--{f.name}", *value] if isinstance(value, list) else [f"--{f.name}", str(value)]
    return argv


COMMON_TRAINER_FIELDS = ("output_dir", "max_steps", "num_train_epochs", "learning_rate", "per_device_train_batch_size",
                         "gradient_accumulation_steps", "lr_scheduler_type", "warmup_ratio", "logging_steps", "save_steps",
                         "seed", "bf16", "report_to", "max_length", "gradient_checkpointing")


def run_stage(stage: str, args: argparse.Namespace, default_config: str) -> int:
    from pathlib import Path

    from .config import ModelArguments, ScriptArguments

    config_cls = stage_config_class(stage)
    types = [ModelArguments, ScriptArguments, config_cls]
    argv = namespace_to_argv(args, types)
    if "--config" not in argv:
        config = Path(__file__).resolve().parents[2] / "recipes" / "configs" / default_config
        if config.is_file():
            argv = ["--config", str(config), *argv]
    from ..recipe_args import parse_recipe_args

    model_args, script_args, training_args = parse_recipe_args(types, argv, prog=f"hfscratch {stage}")
    runner = {"sft": "run_sft", "dpo": "run_dpo", "grpo": "run_grpo"}[stage]
    from importlib import import_module

    getattr(import_module(f"hfscratch.alignment.{stage}"), runner)(model_args, script_args, training_args)
    return 0


def stage_config_class(stage: str):
    import trl

    return {"sft": trl.SFTConfig, "dpo": trl.DPOConfig, "grpo": trl.GRPOConfig}[stage]
