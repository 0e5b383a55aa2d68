"""Pretraining on Accelerate: `accelerate launch recipes/pretrain.py` / `hfscratch pretrain`.

`pretrain(PretrainConfig(...))` runs a whole job (data, model, loop, checkpoints, final folder); the pieces
(`optim`, `metrics`, `stability`, `checkpoint`, `plots`) are usable on their own.

Layout: `loop` (the loop and its state) runs `step` (one optimizer step) on a `backend` (Accelerate or
DeepSpeed), reads `data`, builds the model with `model_factory`, calls `hooks` between steps (logging,
validation, samples, lm-eval, checkpoints, Hub pushes) and ends with `artifacts` (the final folder).
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
