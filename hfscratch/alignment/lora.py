"""LoRA / QLoRA configs with PEFT; checks of a model or adapter path (naming the stage that writes it) and of the
fingerprint that ties an adapter to the base it was trained on."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import BitsAndBytesConfig

from ..atomic import write_file_atomically
from ..errors import CheckpointError, ConfigError
from .config import DEFAULT_CHECKPOINT

BASE_FINGERPRINT_FILE = "hfscratch_base.json"
# Config keys that change with the save, not with the model's identity.
_VOLATILE = ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures", "auto_map", "use_cache",
             "quantization_config", "_commit_hash")
# Each stage's default input is the previous one's default output; the hint names the `hfscratch` command (not the
# recipe), which a wheel install also has.
DEFAULT_CHAIN = {DEFAULT_CHECKPOINT: "hfscratch pretrain", "outputs/sft-synthetic-math/final": "hfscratch sft",
                 "outputs/dpo-synthetic-math/final": "hfscratch dpo"}


def check_checkpoint_path(name: str, what: str = "model") -> None:
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not any((path / f).exists() for f in ("config.json", "adapter_config.json")):
            raise CheckpointError(f"{name} has no config.json: point the {what} at a save_pretrained folder (e.g. outputs/<run>/final)")
    elif producer := DEFAULT_CHAIN.get(Path(name).as_posix()):
        raise CheckpointError(f"no checkpoint at {name}; run `{producer}` first (or pass --model_name_or_path)")
    # not a Hub id either (for a Hub id, from_pretrained reports what is wrong with it)
    elif len(parts := name.split("/")) > 2 or not all(parts) or name.startswith(("outputs", ".", "/", "~")):
        raise CheckpointError(f"{what} {name} not found; pass an existing checkpoint folder or a Hub id")


def build_lora_config(model, target_modules=("all-linear",), r: int = 16, alpha: int = 32, dropout: float = 0.05,
                      modules_to_save=None) -> LoraConfig:
    targets = list(target_modules)
    if targets != ["all-linear"]:  # the short names of the Linear layers, lm_head excluded as PEFT's all-linear does
        available = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                            if isinstance(module, torch.nn.Linear)} - {"lm_head"})
        if unknown := [t for t in targets if t not in available]:
            raise ConfigError(f"lora_target_modules {unknown} are not Linear layers of this model; choose from {available} or use all-linear")
    if r < 1:
        raise ConfigError(f"lora_r must be >= 1, got {r}")
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
                      target_modules="all-linear" if targets == ["all-linear"] else targets,
                      modules_to_save=list(modules_to_save) if modules_to_save else None)


def qlora_unavailable_reason() -> str | None:
    """Why QLoRA cannot run here (None when it can): it needs a CUDA GPU and bitsandbytes."""
    if not torch.cuda.is_available():
        return "QLoRA (load_in_4bit) needs a CUDA GPU, and none is visible; train plain LoRA (use_peft without load_in_4bit)"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "QLoRA (load_in_4bit) needs bitsandbytes: pip install bitsandbytes (or drop load_in_4bit)"
    return None


def quantization_config() -> BitsAndBytesConfig:
    if reason := qlora_unavailable_reason():
        raise ConfigError(reason)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def base_fingerprint(model) -> str:
    """Cheap identity of a base model: its config plus the first values of its first parameters and last norm, which
    already differ between any two trainings (hashing every weight of a multi-GB base would take minutes)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = {k: v for k, v in base.config.to_dict().items() if k not in _VOLATILE}
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
    record = {"base_model": str(base_path), "fingerprint": base_fingerprint(model)}
    write_file_atomically(Path(adapter_dir, BASE_FINGERPRINT_FILE), json.dumps(record, indent=2) + "\n")


def check_base_fingerprint(adapter_dir: str | Path, base_model, base_path: str) -> None:
    path = Path(adapter_dir, BASE_FINGERPRINT_FILE)
    if not path.is_file():
        return  # an adapter trained elsewhere: PEFT's shape checks are all we have
    recorded = json.loads(path.read_text())
    if recorded["fingerprint"] != base_fingerprint(base_model):
        raise CheckpointError(f"adapter {adapter_dir} was trained on base {recorded['base_model']}, but {base_path} is a different "
                              "model (config/weights differ); pass the base it was trained on with --base")
