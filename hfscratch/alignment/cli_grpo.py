"""`hfscratch grpo`: GRPO with the verifiable math reward (TRL GRPOTrainer); the same job as `accelerate launch recipes/grpo.py`.

With no --config it uses recipes/configs/grpo_synthetic_math.yaml (tiny CPU defaults). Multi-process runs go
through `accelerate launch` or torchrun on recipes/grpo.py; this command runs in the current process.
"""

from __future__ import annotations

import argparse

from .cli_common import COMMON_TRAINER_FIELDS, add_dataclass_arguments, run_stage, stage_config_class
from .config import AlignmentDataConfig, AlignmentModelConfig

STAGE_FIELDS = ("num_generations", "max_completion_length", "temperature", "beta", "reward_weights",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, [AlignmentModelConfig, AlignmentDataConfig, stage_config_class("grpo")], COMMON_TRAINER_FIELDS + STAGE_FIELDS)


def run(args: argparse.Namespace) -> int:
    return run_stage("grpo", args, "grpo_synthetic_math.yaml")
