"""Alignment with TRL and PEFT: `run_sft`, `run_dpo`, `run_grpo`, `run_reward` (each measures held-out metrics before
and after training) and `merge_adapter`, which the recipes and the `hfscratch sft|dpo|grpo|reward|merge` commands call."""

from .config import (
    DEFAULT_CHECKPOINT,
    AlignmentDataConfig,
    AlignmentModelConfig,
    DPOStageConfig,
    GRPOStageConfig,
    RewardStageConfig,
    SFTStageConfig,
)
from .dpo import run_dpo
from .grpo import run_grpo
from .merge import merge_adapter
from .reward import run_reward
from .sft import run_sft

__all__ = [
    "DEFAULT_CHECKPOINT", "AlignmentModelConfig", "AlignmentDataConfig", "SFTStageConfig", "DPOStageConfig",
    "GRPOStageConfig", "RewardStageConfig", "run_sft", "run_dpo", "run_grpo", "run_reward", "merge_adapter",
]
