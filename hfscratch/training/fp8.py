"""FP8 training (`mixed_precision: fp8`): torchao's float8 linears inside the transformer blocks, bf16 autocast for
the rest. torchao does the float8 casts, scaling and scaled matmuls; this module only picks the layers and checks
that the hardware (or emulation) can run them.

The weights stay ordinary high-precision parameters with unchanged names (float8 exists only inside the matmuls), so
checkpoints and the final folder are plain HF folders that `from_pretrained` reads without torchao.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

# torch._scaled_mm needs both matmul dimensions divisible by 16; layers that are not keep their high-precision matmul.
FP8_DIM_MULTIPLE = 16


def hardware_has_fp8() -> bool:
    """FP8 tensor cores: NVIDIA compute capability 8.9 (Ada) and newer (Hopper, Blackwell)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def resolve_fp8_emulate(emulate: bool | None) -> bool:
    """None -> emulate exactly where the hardware has no FP8; False on such hardware is an error."""
    if emulate is None:
        return not hardware_has_fp8()
    if not emulate and not hardware_has_fp8():
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "this machine (no CUDA GPU)"
        raise ConfigError(f"mixed_precision fp8 needs FP8 hardware (compute capability >= 8.9), and {device} has none; "
                          "set fp8_emulate true (slow, for testing) or use mixed_precision bf16")
    return emulate


def fp8_layer_filter(output_head: torch.nn.Module | None):
    """Which modules become float8: the linear maps inside the blocks, never the output head (its logits feed the
    loss and are the most precision-sensitive matmul; torchtitan and OLMo-core keep it high-precision too), and only
    those whose dimensions the FP8 kernels accept. Embeddings are not `nn.Linear` and stay as they are."""

    def keep(module: torch.nn.Module, name: str) -> bool:
        if not isinstance(module, torch.nn.Linear) or module is output_head:
            return False
        return module.in_features % FP8_DIM_MULTIPLE == 0 and module.out_features % FP8_DIM_MULTIPLE == 0

    return keep


def convert_to_fp8(model: torch.nn.Module, emulate: bool | None) -> int:
    """Swap the chosen `nn.Linear`s of `model` for torchao `Float8Linear`s in place; returns how many were swapped."""
    emulate = resolve_fp8_emulate(emulate)
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training  # lazily: torchao is the fp8 extra
    except ImportError:
        raise ConfigError("mixed_precision fp8 needs torchao: pip install 'hfscratch[fp8]' (or pip install torchao)") from None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    keep = fp8_layer_filter(head)
    count = sum(keep(module, name) for name, module in model.named_modules())
    if count == 0:
        raise ConfigError(f"mixed_precision fp8 found no linear layer with both sizes divisible by {FP8_DIM_MULTIPLE}; "
                          "use hidden sizes that are multiples of 16, or mixed_precision bf16")
    convert_to_float8_training(model, module_filter_fn=keep, config=Float8LinearConfig(emulate=emulate))
    # torchao's float8 tensors lack the dtype cast CPU autocast asks for under inference_mode, where the lean decoding
    # loop runs; the samples logged during training take transformers' loop (no_grad) instead. Saved folders hold
    # plain linears and decode lean again.
    model.lean_decoding = False
    return count
