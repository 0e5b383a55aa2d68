"""Pretraining on Accelerate (`hfscratch pretrain`): `pretrain(PretrainConfig(...))` runs a whole job.

`loop` runs `step` (one optimizer step) on a `backend`, reads `data`, builds the model with `model_factory`, calls
`hooks` between steps and ends with `artifacts` (the final folder); `fp8` swaps in float8 linears for
`mixed_precision: fp8`; `optim` (AdamW, Muon + AdamW, schedules), `metrics`, `stability` and `checkpoint` are usable
on their own.
"""

from ..data.config import DataConfig
from .config import BatchPlan, ModelConfig, PretrainConfig, TrainConfig, plan_batches
from .loop import Pretrainer, PretrainResult, TrainingData, pretrain
from .stability import SpikeDetector, TrainingDivergedError
from .summary import print_summary

__all__ = [
    "BatchPlan", "DataConfig", "ModelConfig", "PretrainConfig", "PretrainResult", "Pretrainer", "SpikeDetector", "TrainConfig",
    "TrainingData", "TrainingDivergedError", "plan_batches", "pretrain", "print_summary",
]
