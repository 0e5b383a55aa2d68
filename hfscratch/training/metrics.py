"""Throughput metrics: FLOPs per token, model FLOPs utilisation (MFU), bits per byte, memory."""

from __future__ import annotations

import functools
import math
import time

import torch

# Dense (non-sparse) peak FLOP/s per device from the vendors' datasheets: (bf16/fp16 tensor core, fp32).
# fp32 uses TF32 tensor cores when `allow_tf32` is on (the loop turns it on), so the TF32 figure is the peak.
# Matched by substring of `torch.cuda.get_device_name()`, most specific first.
GPU_PEAK_FLOPS: list[tuple[str, float, float]] = [
    ("GB200", 2.5e15, 1.25e15), ("B200", 2.25e15, 1.1e15), ("H200", 989e12, 494e12), ("H100 PCIe", 756e12, 378e12),
    ("H100", 989e12, 494e12), ("H800", 989e12, 494e12), ("GH200", 989e12, 494e12),  # H100: SXM / NVL
    ("A100", 312e12, 156e12), ("A800", 312e12, 156e12), ("L40S", 362e12, 183e12), ("L40", 181e12, 90.5e12),
    ("L4", 121e12, 60e12), ("A10G", 70e12, 35e12), ("A10", 125e12, 62.5e12), ("A6000", 155e12, 77e12),
    ("RTX 4090", 165e12, 82.6e12), ("RTX 3090", 71e12, 35.6e12), ("V100", 125e12, 15.7e12), ("T4", 65e12, 8.1e12),
    ("MI300X", 1307e12, 653e12), ("MI250X", 383e12, 47.9e12),
]


def matmul_parameter_count(config) -> int:
    """Weights that take part in a matmul per token: all Linear layers plus the LM head (a hidden x vocab matmul
    whether or not it is tied; the input embedding is a lookup, no FLOPs)."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    attention = h * q + 2 * h * kv + q * h
    mlp = (3 if config.mlp_type == "swiglu" else 2) * h * inter
    return layers * (attention + mlp) + h * config.vocab_size


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul params (fwd 2, bwd 4) + attention scores and values. The attention term
    is PaLM's appendix-B estimate; it ignores the causal mask's halving, as nanoGPT and most MFU reports do."""
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * seq_len
    return 6 * matmul_parameter_count(config) + attention


@functools.cache
def measure_cpu_peak_flops(dtype: torch.dtype = torch.float32, seconds: float = 1.0) -> float:
    """Best observed FLOP/s of a 1024x1024 matmul on this CPU: CPUs have no datasheet number, and a large matmul is
    what BLAS runs closest to peak. On a machine shared with other jobs it reads low (MFU high): pass --peak_flops."""
    n = 1024
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)  # warm up the BLAS threads
    # The deadline starts after the warm-up, and one product is always timed: on a CPU without native bf16 a single
    # bf16 product can take longer than `seconds`, which used to leave no measurement (MFU "n/a").
    best, deadline = 0.0, time.perf_counter() + seconds
    while not best or time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def peak_flops_per_device(device: torch.device, mixed_precision: str, override: float | None = None) -> tuple[float | None, str]:
    """(peak FLOP/s, where the number comes from). None when the GPU is unknown and no override is given."""
    if override:
        return float(override), "configured"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        column = 1 if mixed_precision in ("bf16", "fp16", "fp8") else 2  # fp8 MFU against the bf16 peak, as torchtitan reports it
        peak = next((row[column] for row in GPU_PEAK_FLOPS if row[0] in name), None)
        return peak, f"datasheet ({name})" if peak else f"unknown GPU {name!r}: pass --peak_flops for MFU"
    if device.type == "cpu":
        return measure_cpu_peak_flops(torch.bfloat16 if mixed_precision in ("bf16", "fp8") else torch.float32), "measured (matmul probe)"
    return None, f"unknown device {device.type}: pass --peak_flops for MFU"


def mfu(tokens_per_second: float, flops_per_tok: float, peak_flops: float | None, world_size: int = 1) -> float | None:
    return None if not peak_flops else tokens_per_second * flops_per_tok / (peak_flops * world_size)


def bits_per_byte_from_nll(total_nll_nats: float, total_bytes: int) -> float:
    """Tokenizer-independent quality: summed NLL (nats) of the predicted tokens over their UTF-8 bytes."""
    return total_nll_nats / (math.log(2) * max(1, total_bytes))


def memory_stats(device: torch.device) -> dict[str, float]:
    """Peak allocated accelerator memory (GiB); process RSS on CPU."""
    if device.type == "cuda":
        return {"memory/peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    try:
        import resource  # Unix only

        # ru_maxrss is KiB on Linux.
        return {"memory/peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    except (ImportError, OSError):
        return {}
