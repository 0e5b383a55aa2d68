"""Pretraining on Accelerate: `accelerate launch recipes/pretrain.py` / `hfscratch pretrain`.

`pretrain(model_args, data_args, training_args)` runs a whole job (data, model, loop, checkpoints, final
folder); the pieces (`optim`, `metrics`, `stability`, `checkpoint`, `plots`) are usable on their own.
"""

from .config import BatchPlan, DataArguments, ModelArguments, TrainingArguments, plan_batches
from .loop import PretrainResult, Pretrainer, TrainingData, pretrain
from .stability import SpikeDetector, TrainingDivergedError
from .summary import print_summary

__all__ = [
    "BatchPlan", "DataArguments", "ModelArguments", "PretrainResult", "Pretrainer", "SpikeDetector", "TrainingArguments",
    "TrainingData", "TrainingDivergedError", "plan_batches", "pretrain", "print_summary",
]
