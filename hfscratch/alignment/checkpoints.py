"""Checking a model path before the alignment stages load it, with a hint naming the stage that writes it.

Shared by the stages (common.py) and `hfscratch merge` (merge.py), which the stages call to write a merged copy.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from .config import DEFAULT_CHECKPOINT


def looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) <= 2 and all(parts) and not name.startswith(("outputs", ".", "/", "~"))


# The default chain (pretrain -> SFT -> DPO -> GRPO): each stage's default input is the previous stage's default output.
# The hint names the `hfscratch` command (same options as recipes/<stage>.py), which also exists for a wheel install.
DEFAULT_CHAIN = {DEFAULT_CHECKPOINT: "hfscratch pretrain", "outputs/sft-synthetic-math/final": "hfscratch sft",
                 "outputs/dpo-synthetic-math/final": "hfscratch dpo"}


def check_checkpoint_path(name: str, what: str = "model") -> None:
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not any((path / f).exists() for f in ("config.json", "adapter_config.json")):
            raise CheckpointError(f"{name} has no config.json: point the {what} at a save_pretrained folder (e.g. outputs/<run>/final)")
        return
    producer = DEFAULT_CHAIN.get(Path(name).as_posix())
    if producer:
        raise CheckpointError(f"no checkpoint at {name}; run `{producer}` first (or pass --model_name_or_path)")
    if looks_like_hub_id(name):
        return  # a Hub id: from_pretrained reports what is wrong with it
    raise CheckpointError(f"{what} {name} not found; pass an existing checkpoint folder or a Hub id")
