"""Pretraining on Accelerate: `accelerate launch recipes/pretrain.py` / `hfscratch pretrain`.

`pretrain(model_args, data_args, training_args)` runs a whole job (data, model, loop, checkpoints, final
folder); the pieces (`optim`, `metrics`, `stability`, `checkpoint`, `plots`) are usable on their own.

Layout: `loop` (the loop and its state) runs `step` (one optimizer step) on a `backend` (Accelerate or
DeepSpeed), reads `data`, builds the model with `model_factory`, calls `hooks` between steps (logging,
validation, samples, lm-eval, checkpoints, Hub pushes) and ends with `artifacts` (the final folder).
"""

from .config import BatchPlan, DataArguments, ModelConfig, TrainConfig, plan_batches
from .loop import Pretrainer, PretrainResult, TrainingData, pretrain
from .stability import SpikeDetector, TrainingDivergedError
from .summary import print_summary

__all__ = [
    "BatchPlan", "DataArguments", "ModelConfig", "PretrainResult", "Pretrainer", "SpikeDetector", "TrainConfig",
    "TrainingData", "TrainingDivergedError", "plan_batches", "pretrain", "print_summary",
]
