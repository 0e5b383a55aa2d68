"""`hfscratch sft`: supervised fine-tuning (TRL SFTTrainer); the same job as `accelerate launch recipes/sft.py`.

With no --config it uses recipes/configs/sft_synthetic_math.yaml (tiny CPU defaults). Multi-process runs go
through `accelerate launch` or torchrun on recipes/sft.py; this command runs in the current process.
"""

from __future__ import annotations

import argparse

from .cli_common import COMMON_TRAINER_FIELDS, add_dataclass_arguments, run_stage, stage_config_class
from .config import AlignmentDataConfig, AlignmentModelConfig

STAGE_FIELDS = ("packing", "padding_free", "assistant_only_loss",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, [AlignmentModelConfig, AlignmentDataConfig, stage_config_class("sft")], COMMON_TRAINER_FIELDS + STAGE_FIELDS)


def run(args: argparse.Namespace) -> int:
    return run_stage("sft", args, "sft_synthetic_math.yaml")
