"""AdamW with weight decay on matrices only, and the learning-rate schedules (warmup + cosine | WSD | constant)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay 2-D+ weights (linear layers, embeddings), never norms' gains or biases: decaying a gain pulls it
    towards 0 (not 1) and decaying biases only hurts (GPT-3, Llama, nanoGPT). Tied weights appear once here."""
    decay, no_decay = [], []
    for param in (p for p in model.parameters() if p.requires_grad):
        # DeepSpeed ZeRO-3 builds the model partitioned (flat, empty placeholders): its true shape is ds_shape.
        ndim = len(param.ds_shape) if hasattr(param, "ds_shape") else param.ndim
        (decay if ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW; the fused CUDA kernel when every parameter is on a GPU (one kernel instead of a loop per tensor)."""
    groups = parameter_groups(model, weight_decay)
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True if on_cuda else None)


def lr_multiplier(step: int, *, max_steps: int, warmup_steps: int, schedule: str, min_lr_ratio: float, wsd_decay_ratio: float = 0.2) -> float:
    """Factor on the peak LR for the update with index `step` (0-based). Linear warmup reaches the peak at
    `warmup_steps - 1` (the first update gets 1/warmup, never 0); cosine then decays to `min_lr_ratio` at `max_steps`;
    WSD stays at the peak, then decays linearly to `min_lr_ratio` over the last `wsd_decay_ratio` of the steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_steps = max(1, int(round(wsd_decay_ratio * max_steps)))
        decay_start = max(warmup_steps, max_steps - decay_steps)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
        return 1.0 - (1.0 - min_lr_ratio) * progress
    raise ValueError(f"unknown lr schedule {schedule!r}")


class ScheduleFunction:
    """Picklable callable for LambdaLR (a lambda would not survive `save_state`)."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __call__(self, step: int) -> float:
        return lr_multiplier(step, **self.kwargs)


def build_scheduler(optimizer, *, max_steps: int, warmup_steps: int, schedule: str, min_lr_ratio: float, wsd_decay_ratio: float = 0.2) -> LambdaLR:
    return LambdaLR(optimizer, ScheduleFunction(max_steps=max_steps, warmup_steps=warmup_steps, schedule=schedule,
                                                min_lr_ratio=min_lr_ratio, wsd_decay_ratio=wsd_decay_ratio))
