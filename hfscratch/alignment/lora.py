"""LoRA / QLoRA configuration with PEFT, and a fingerprint that ties an adapter to the base it was trained on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError

BASE_FINGERPRINT_FILE = "hfscratch_base.json"
LLAMA_LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def linear_module_names(model) -> list[str]:
    """Short names of the Linear layers LoRA can wrap (lm_head excluded, as PEFT's all-linear does)."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    names.discard("lm_head")
    return sorted(names)


def build_lora_config(model, target_modules=("all-linear",), r: int = 16, alpha: int = 32, dropout: float = 0.05,
                      modules_to_save=None):
    from peft import LoraConfig

    targets = list(target_modules)
    if targets != ["all-linear"]:
        available = linear_module_names(model)
        unknown = [t for t in targets if t not in available]
        if unknown:
            raise ConfigError(f"lora_target_modules {unknown} are not Linear layers of this model; "
                              f"choose from {available} or use all-linear")
    if r < 1:
        raise ConfigError(f"lora_r must be >= 1, got {r}")
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
    )


def qlora_unavailable_reason() -> str | None:
    """Why QLoRA cannot run here (None when it can): it needs a CUDA GPU and bitsandbytes."""
    if not torch.cuda.is_available():
        return "QLoRA (load_in_4bit) needs a CUDA GPU, and none is visible; train plain LoRA (use_peft without load_in_4bit)"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "QLoRA (load_in_4bit) needs bitsandbytes: pip install bitsandbytes (or drop load_in_4bit)"
    return None


def quantization_config():
    reason = qlora_unavailable_reason()
    if reason:
        raise ConfigError(reason)
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def base_fingerprint(model) -> str:
    """Cheap identity of a base model: its architecture config plus a sample of its weights.

    Hashing every weight of a multi-GB base would take minutes; the config plus the first rows of the
    embedding, the first attention projection and the last norm already differ between any two trainings.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures", "auto_map",
                     "use_cache", "quantization_config", "_commit_hash"):
        config.pop(volatile, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    sampled = 0
    for name, param in base.named_parameters():
        if "lora_" in name or ".modules_to_save." in name:
            continue
        # PEFT renames wrapped layers (q_proj.base_layer.weight); the fingerprint must not see the wrapping.
        name = name.replace(".base_layer", "").replace(".original_module", "")
        if sampled < 3 or name.endswith("model.norm.weight"):
            digest.update(name.encode())
            digest.update(param.detach().flatten()[:4096].float().cpu().numpy().tobytes())
            sampled += 1
    return digest.hexdigest()


def write_base_fingerprint(adapter_dir: str | Path, model, base_path: str) -> None:
    Path(adapter_dir, BASE_FINGERPRINT_FILE).write_text(
        json.dumps({"base_model": str(base_path), "fingerprint": base_fingerprint(model)}, indent=2) + "\n")


def check_base_fingerprint(adapter_dir: str | Path, base_model, base_path: str) -> None:
    path = Path(adapter_dir, BASE_FINGERPRINT_FILE)
    if not path.is_file():
        return  # an adapter trained elsewhere: PEFT's shape checks are all we have
    recorded = json.loads(path.read_text())
    if recorded["fingerprint"] != base_fingerprint(base_model):
        raise CheckpointError(
            f"adapter {adapter_dir} was trained on base {recorded['base_model']}, but {base_path} is a different model "
            "(config/weights differ); pass the base it was trained on with --base")
