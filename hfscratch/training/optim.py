"""The optimizers (AdamW with weight decay on matrices only; Muon on the hidden matrices + AdamW on the rest) and the
learning-rate schedules (warmup + cosine | WSD | constant)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..errors import ConfigError


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


def muon_parameter_split(model: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(hidden matrices for Muon, embedding/head matrices for AdamW, vectors for AdamW without decay).

    Muon orthogonalises each 2-D update, which suits the linear maps inside the blocks; the embedding and the output
    head are lookups/readouts over the vocabulary and stay on AdamW (Keller Jordan's Muon, nanochat, Moonshot)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    if (head := getattr(model, "get_output_embeddings", lambda: None)()) is not None:
        embeddings.add(id(head.weight))
    hidden, vocab, vectors, seen = [], [], [], set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if param.ndim < 2:
            vectors.append(param)
        else:
            (vocab if id(param) in embeddings else hidden).append(param)
    return hidden, vocab, vectors


def orthogonalize_fp32(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration (the one torch.optim.Muon runs) in float32."""
    a, b, c = coefficients
    x = update.float()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(torch.optim.Muon):
    """`torch.optim.Muon`, with the orthogonalisation in float32 where a parameter lives on the CPU.

    torch runs Newton-Schulz in bf16, right for GPUs; on CPUs small bf16 GEMMs can be far slower than fp32 ones (one
    iteration on a 128x384 matrix: ~20 ms in bf16 against 0.8 ms in fp32 on the 2-core test machine), which made a
    Muon step of the 1M-parameter benchmark model take 1.3 s instead of 0.28 s. On GPUs
    torch's own step runs unchanged; the state (`momentum_buffer`) is torch's either way, so checkpoints move freely."""

    @torch.no_grad()
    def step(self, closure=None):
        if all(p.device.type != "cpu" for g in self.param_groups for p in g["params"]):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for param in (p for p in group["params"] if p.grad is not None):
                buffer = self.state[param].setdefault("momentum_buffer", torch.zeros_like(param.grad))
                buffer.lerp_(param.grad, 1 - momentum)
                update = param.grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = orthogonalize_fp32(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update.to(param.dtype), alpha=-_muon_adjusted_lr(lr, group["adjust_lr_fn"], param.shape))
        return loss


def _muon_adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-matrix LR scale: `original` sqrt(max(1, rows/cols)); `match_rms_adamw` 0.2 sqrt(max dim)."""
    rows, cols = shape[:2]
    return lr * (0.2 * math.sqrt(max(rows, cols)) if adjust_lr_fn == "match_rms_adamw" else math.sqrt(max(1.0, rows / cols)))


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on the hidden matrices and `torch.optim.AdamW` on everything else, as one optimizer.

    Schedulers, Accelerate and checkpoints take one `Optimizer`; this one owns the union of both optimizers' param
    groups (the same dicts, so a scheduler's LR reaches them) and one `state` they share (their parameters are
    disjoint), so the stock `state_dict`/`load_state_dict` save and restore both. torch ships no such combination."""

    def __init__(self, muon_params, adamw_groups: list[dict], *, lr: float, muon_lr: float, weight_decay: float,
                 momentum: float = 0.95, adjust_lr_fn: str = "match_rms_adamw", betas=(0.9, 0.95), eps: float = 1e-8):
        self.muon = Muon(muon_params, lr=muon_lr, weight_decay=weight_decay, momentum=momentum, adjust_lr_fn=adjust_lr_fn)
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps)
        for group in self.muon.param_groups:
            group["optimizer"] = "muon"
        for group in self.adamw.param_groups:
            group["optimizer"] = "adamw"
        super().__init__(self.muon.param_groups + self.adamw.param_groups, {})
        self._link()

    def _link(self) -> None:
        """Point both inner optimizers at this optimizer's groups and state (again after `load_state_dict`,
        which replaces both)."""
        self.muon.param_groups = [g for g in self.param_groups if g["optimizer"] == "muon"]
        self.adamw.param_groups = [g for g in self.param_groups if g["optimizer"] == "adamw"]
        self.muon.state = self.adamw.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss


def build_muon_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, *, muon_lr: float | None = None,
                         momentum: float = 0.95, adjust_lr_fn: str = "match_rms_adamw", betas=(0.9, 0.95),
                         eps: float = 1e-8) -> MuonWithAdamW:
    """Muon for the hidden matrices, AdamW (decay on the embedding/head matrices only) for the rest. With
    `match_rms_adamw` (Moonshot's "Muon is scalable") Muon's update has AdamW's RMS, so one LR and one weight decay
    serve both; `original` (Keller Jordan's) wants a Muon LR near 0.02."""
    hidden, vocab, vectors = muon_parameter_split(model)
    if not hidden:
        raise ConfigError("optimizer muon found no hidden 2-D weight matrices to optimise; use optimizer adamw")
    adamw_groups = [{"params": vocab, "weight_decay": weight_decay}] + ([{"params": vectors, "weight_decay": 0.0}] if vectors else [])
    return MuonWithAdamW(hidden, adamw_groups, lr=lr, muon_lr=lr if muon_lr is None else muon_lr, weight_decay=weight_decay,
                         momentum=momentum, adjust_lr_fn=adjust_lr_fn, betas=betas, eps=eps)


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
