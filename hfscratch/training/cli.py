"""`hfscratch pretrain`: the same job as `accelerate launch recipes/pretrain.py`.

The dataclass fields become options here only so `--help` lists them; values are handed back to
`parse_recipe_args` as strings, so YAML and command line are checked by one parser with one set of errors.
Multi-process runs go through `accelerate launch` (or torchrun); this command runs in the current process.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .config import DataArguments, ModelArguments, TrainingArguments

ARGUMENT_TYPES = [ModelArguments, DataArguments, TrainingArguments]
# In a source checkout the CPU default lives beside the recipes; installed elsewhere the dataclass defaults
# (which equal that file except for the step budget: one epoch) apply.
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "pretrain_tiny.yaml"


def _is_list(annotation) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.startswith("list")


def _is_bool(annotation) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.startswith("bool")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=argparse.SUPPRESS, help="YAML config (e.g. recipes/configs/pretrain_tiny.yaml); options below override it")
    for dtype in ARGUMENT_TYPES:
        group = parser.add_argument_group(dtype.__name__)
        for f in dataclasses.fields(dtype):
            help_text = f.metadata.get("help", "")
            default = f.default if f.default is not dataclasses.MISSING else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            help_text = f"{help_text} (default: {default})".strip()
            if _is_list(f.type):
                group.add_argument(f"--{f.name}", nargs="*", default=argparse.SUPPRESS, help=help_text)
            elif _is_bool(f.type):
                group.add_argument(f"--{f.name}", nargs="?", const="true", default=argparse.SUPPRESS, help=help_text)
            else:
                group.add_argument(f"--{f.name}", default=argparse.SUPPRESS, help=help_text)


def namespace_to_argv(args: argparse.Namespace) -> list[str]:
    argv: list[str] = []
    if getattr(args, "config", None):
        argv += ["--config", args.config]
    for dtype in ARGUMENT_TYPES:
        for f in dataclasses.fields(dtype):
            if hasattr(args, f.name):
                value = getattr(args, f.name)
                argv += [f"--{f.name}", *value] if isinstance(value, list) else [f"--{f.name}", str(value)]
    return argv


def run(args: argparse.Namespace) -> int:
    from ..recipe_args import parse_recipe_args
    from .loop import pretrain
    from .summary import print_summary

    argv = namespace_to_argv(args)
    if "--config" not in argv and DEFAULT_CONFIG.is_file():
        argv = ["--config", str(DEFAULT_CONFIG), *argv]  # same default run as `accelerate launch recipes/pretrain.py`
    model_args, data_args, training_args = parse_recipe_args(ARGUMENT_TYPES, argv, prog="hfscratch pretrain")
    print_summary(pretrain(model_args, data_args, training_args))
    return 0


__all__ = ["add_arguments", "run", "namespace_to_argv"]
