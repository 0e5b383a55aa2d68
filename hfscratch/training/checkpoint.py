"""Atomic, resumable checkpoints in `<output_dir>/checkpoints/checkpoint-0000100/`: `accelerate save_state`
(model, optimizer, scheduler, RNG; sharded under FSDP; under tensor parallelism a torch.distributed.checkpoint
`tp_state/` beside the RNG files), `hf/` (a `save_pretrained` folder + tokenizer) and
`trainer_state.json` (step, data position, histories, stability statistics). Written to `.tmp-checkpoint-…`,
`trainer_state.json` last, then renamed: a kill or a full disk mid-write leaves the previous one untouched.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import torch

from ..atomic import write_file_atomically
from ..errors import CheckpointError
from .stability import TrainingDivergedError

CHECKPOINT_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
HF_SUBDIR = "hf"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:07d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under `output_dir/checkpoints`, oldest first."""
    root = Path(output_dir) / CHECKPOINT_DIR
    found = [(int(m.group(1)), p) for p in (root.iterdir() if root.is_dir() else ()) if (m := _NAME.match(p.name)) and (p / TRAINER_STATE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(spec: str, output_dir: str | Path) -> Path:
    """`latest` -> newest complete checkpoint of this run; otherwise an explicit folder, validated."""
    if spec == "latest":
        if not (checkpoints := list_checkpoints(output_dir)):
            raise CheckpointError(f"--resume_from_checkpoint latest: no complete checkpoint in {Path(output_dir) / CHECKPOINT_DIR}; "
                                  "drop the flag to start a new run or pass a checkpoint PATH")
        return checkpoints[-1]
    path = Path(spec)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a checkpoint folder or 'latest'")
    if not (path / TRAINER_STATE).is_file():
        raise CheckpointError(f"{path} is not a complete hfscratch checkpoint (no {TRAINER_STATE}); pick another one or 'latest'")
    return path


def read_trainer_state(path: str | Path) -> dict:
    try:
        return json.loads((Path(path) / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {path} has an unreadable {TRAINER_STATE} ({err}); resume from an earlier checkpoint") from None


def drop_tied_copies(model, state_dict: dict) -> dict:
    """Leave tied weights (lm_head = embed_tokens) out of a gathered state dict: `save_pretrained` recognises a tie
    by shared storage, but DeepSpeed's and FSDP's gathers return separate copies. Loading re-ties them."""
    tied = getattr(model, "_tied_weights_keys", None)
    if not isinstance(tied, dict) or not getattr(model.config, "tie_word_embeddings", False):
        return state_dict
    return {k: v for k, v in state_dict.items() if not (k in tied and tied[k] in state_dict)}


def any_rank(accelerator, flag: bool) -> bool:
    """Whether `flag` holds on any process, so that every rank takes the same decision (none waits at a barrier)."""
    total = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return (accelerator.reduce(total, reduction="sum") if accelerator.num_processes > 1 else total).item() > 0


def assert_finite(accelerator, state_dict: dict) -> None:
    """Never write NaN/Inf weights: a checkpoint must always be a safe point to resume from. Checked on the gathered
    full state dict (ZeRO-3/FSDP ranks hold only shards or empty placeholders)."""
    bad = None
    if accelerator.is_main_process:
        bad = next((name for name, t in state_dict.items()
                    if torch.is_tensor(t) and t.is_floating_point() and t.numel() and not torch.isfinite(t).all()), None)
    if any_rank(accelerator, bad is not None):
        where = f"parameter {bad}" if bad else "a parameter"
        raise TrainingDivergedError(f"{where} holds NaN/Inf; refusing to write a checkpoint. Resume from the last good checkpoint with a lower learning_rate")


def _write_trainer_state(folder: Path, state: dict) -> None:
    write_file_atomically(folder / TRAINER_STATE, json.dumps(state, indent=1, allow_nan=False))


def disk_write_error(err: OSError, what: Path, previous: Path | None) -> CheckpointError:
    """The one-line error for a failed write of `what`, saying whether the last checkpoint `previous` survived."""
    keep = f"; the previous checkpoint {previous} is intact" if previous else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointError(f"disk full while writing {what}{keep}; free space, lower keep_last_k or use another output_dir")
    return CheckpointError(f"could not write {what} ({err.strerror or err}){keep}; check the output_dir permissions and space")


def save_checkpoint(backend, tokenizer, output_dir: str | Path, step: int, trainer_state: dict, keep_last_k: int) -> Path:
    """Write checkpoint `step` atomically on every rank's behalf (a `training/backend.py` engine's state, an `hf/`
    folder); returns its final path (all ranks)."""
    accelerator = backend.accelerator
    root = Path(output_dir) / CHECKPOINT_DIR
    final, tmp = root / checkpoint_name(step), root / f".tmp-{checkpoint_name(step)}"
    previous = (list_checkpoints(output_dir) or [None])[-1]
    # Every rank takes part in gathering the full state dict (FSDP/ZeRO-3/TP); the main one checks and writes it.
    state_dict = backend.gather_state_dict()
    assert_finite(accelerator, state_dict)
    failure = None
    try:
        if accelerator.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # a leftover from a run killed mid-save
                shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        backend.save_state(tmp)
        backend.write_pretrained(tmp / HF_SUBDIR, state_dict)
        if accelerator.is_main_process:
            tokenizer.save_pretrained(tmp / HF_SUBDIR)
            _write_trainer_state(tmp, trainer_state)
    except OSError as err:
        failure = disk_write_error(err, tmp, previous)
    if any_rank(accelerator, failure is not None):
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise failure or CheckpointError(f"another process failed while writing {tmp}; see its message above")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # re-saving the same step (e.g. the end of a run that just saved): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep_last_k] if keep_last_k > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(backend, path: Path) -> dict:
    """Restore model, optimizer, scheduler and RNG states; return the trainer state."""
    state = read_trainer_state(path)
    if (written := state.get("tp_size", 1)) != backend.args.tp_size:
        raise CheckpointError(f"checkpoint {path} was written with tp_size {written} and this run has tp_size {backend.args.tp_size}; "
                              f"resume with --tp_size {written} (its optimizer state is laid out that way), or start a new run "
                              f"from its weights with --init_from {Path(path) / HF_SUBDIR}")
    if (written := state.get("optimizer", backend.args.optimizer)) != backend.args.optimizer:  # older states lack the key
        raise CheckpointError(f"checkpoint {path} holds {written} optimizer state and this run uses {backend.args.optimizer}; "
                              f"resume with --optimizer {written} (muon runs on one process or DDP), or start a new run "
                              f"from its weights with --init_from {Path(path) / HF_SUBDIR}")
    try:
        backend.load_state(path)
    except Exception as err:  # safetensors/pickle/shape errors all mean the same thing to the user
        message = (str(err).splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"checkpoint {path} is corrupt or from a different model ({message}); resume from an earlier checkpoint") from None
    for key in ("step", "sequences_consumed", "tokens_seen"):
        if not isinstance(state.get(key), int):
            raise CheckpointError(f"checkpoint {path}: {TRAINER_STATE} lacks {key!r}; it was not written by hfscratch pretrain")
    return state
