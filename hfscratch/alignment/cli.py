"""`hfscratch sft|dpo|grpo` (the same `main` as `recipes/sft.py`, `dpo.py`, `grpo.py`).

Multi-process runs go through `accelerate launch` or torchrun on the recipe; the command runs in this process.
"""

from __future__ import annotations

from ..options import parse_config
from .config import DPOStageConfig, GRPOStageConfig, SFTStageConfig
from .dpo import run_dpo
from .grpo import run_grpo
from .sft import run_sft


def main_sft(argv: list[str]) -> int:
    config = parse_config(SFTStageConfig, argv, prog="hfscratch sft", default_config="sft_synthetic_math")
    run_sft(config.model, config.data, config.train)
    return 0


def main_dpo(argv: list[str]) -> int:
    config = parse_config(DPOStageConfig, argv, prog="hfscratch dpo", default_config="dpo_synthetic_math")
    run_dpo(config.model, config.data, config.train)
    return 0


def main_grpo(argv: list[str]) -> int:
    config = parse_config(GRPOStageConfig, argv, prog="hfscratch grpo", default_config="grpo_synthetic_math")
    run_grpo(config.model, config.data, config.train)
    return 0
