"""`hfscratch dpo`: DPO (TRL DPOTrainer); the same job as `accelerate launch recipes/dpo.py`.

With no --config it uses recipes/configs/dpo_synthetic_math.yaml (tiny CPU defaults). Multi-process runs go
through `accelerate launch` or torchrun on recipes/dpo.py; this command runs in the current process.
"""

from __future__ import annotations

import argparse

from .cli_common import COMMON_TRAINER_FIELDS, add_dataclass_arguments, run_stage, stage_config_class
from .config import AlignmentDataConfig, AlignmentModelConfig

STAGE_FIELDS = ("beta", "loss_type",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, [AlignmentModelConfig, AlignmentDataConfig, stage_config_class("dpo")], COMMON_TRAINER_FIELDS + STAGE_FIELDS)


def run(args: argparse.Namespace) -> int:
    return run_stage("dpo", args, "dpo_synthetic_math.yaml")
