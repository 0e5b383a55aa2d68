"""Where and in which precision a model runs when the user says "auto": one rule for every command."""

from __future__ import annotations

import torch

from .errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str | None = "auto") -> torch.device:
    """"auto" (or None): CUDA, else Apple's MPS, else the CPU; anything else is passed to torch.device."""
    if name and name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str | torch.dtype | None, device: torch.device | str | None = None) -> torch.dtype:
    """"auto" (or None): bfloat16 on a CUDA device that has it, else float32. float16 is never chosen for the user:
    without loss scaling its range overflows in training, and on CPUs it is slow; ask for it by name."""
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        device = resolve_device(None) if device is None else torch.device(device)
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[name]
