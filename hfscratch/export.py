"""`hfscratch export PATH OUT --to llama|qwen3`: a checkpoint stock transformers loads without remote code.

hfscratch uses Llama's parameter names and, with the default switches, computes what `LlamaForCausalLM` computes
(`qk_norm=True`: `Qwen3ForCausalLM`), so export is a config translation plus a verbatim copy of the safetensors
files: the logits are bit-identical. Every tensor name and shape is first checked against the target built on the
meta device, so a checkpoint it cannot hold is refused instead of loading with silently re-initialised weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import CheckpointError, ConfigError
from .hub import PICKLE_PATTERNS, check_model_folder, matches_any
from .model_card import safetensors_shapes, write_model_card

TARGETS = ("llama", "qwen3")
# hfscratch-only fields that have no meaning in the target config.
_HFSCRATCH_ONLY = ("position_embedding_type", "norm_type", "mlp_type", "qk_norm", "scale_residual_init")


def _target_classes(to: str):
    import transformers

    prefix = "Llama" if to == "llama" else "Qwen3"
    return getattr(transformers, f"{prefix}Config"), getattr(transformers, f"{prefix}ForCausalLM")


def _refusals(config: dict, to: str) -> list[str]:
    """Why `config` cannot be expressed in the target architecture (empty: it can)."""
    reasons = []
    if config.get("position_embedding_type", "rope") != "rope":
        reasons.append(f"it uses learned absolute positions, {to} only has RoPE")
    if config.get("norm_type", "rmsnorm") != "rmsnorm":
        reasons.append(f"it uses LayerNorm, {to} only has RMSNorm")
    if config.get("mlp_type", "swiglu") != "swiglu":
        reasons.append(f"it uses a plain GELU MLP, {to} only has a gated (SwiGLU-style) MLP")
    if to == "llama" and config.get("qk_norm"):
        reasons.append("it has QK-norm, which Llama lacks (use --to qwen3)")
    if to == "qwen3" and not config.get("qk_norm"):
        reasons.append("Qwen3 always applies QK-norm and this model has none (use --to llama)")
    if to == "qwen3" and config.get("mlp_bias"):
        reasons.append("it has MLP biases, which Qwen3's MLP has no place for (use --to llama)")
    return reasons


def target_config(config: dict, to: str):
    """The stock transformers config equal to an hfscratch config.json dict (after `_refusals` is empty)."""
    config_class, _ = _target_classes(to)
    kwargs = {k: v for k, v in config.items() if k not in _HFSCRATCH_ONLY and k not in
              ("auto_map", "architectures", "model_type", "transformers_version", "_name_or_path")}
    if to == "qwen3":
        kwargs.setdefault("use_sliding_window", False)
        kwargs.pop("mlp_bias", None)
    target = config_class(**kwargs)
    target.architectures = ["LlamaForCausalLM" if to == "llama" else "Qwen3ForCausalLM"]
    return target


def _expected_shapes(target) -> dict[str, tuple[int, ...]]:
    import torch

    _, model_class = _target_classes(target.model_type)
    with torch.device("meta"):
        model = model_class(target)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _check_tensors(src: Path, target) -> None:
    found = safetensors_shapes(src)
    expected = _expected_shapes(target)
    if target.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        found.pop("lm_head.weight", None)  # tied: the target reads the embedding; a stored copy is redundant
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(n for n in set(found) & set(expected) if found[n] != expected[n])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"tensors {target.model_type} has no place for {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        if wrong:
            parts.append(f"wrong shapes for {wrong[:3]}")
        raise CheckpointError(f"{src} does not match its config.json ({'; '.join(parts)}); re-save the model with save_pretrained")


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out} already exists and is not empty; choose a new output folder (nothing is overwritten)")
    out.parent.mkdir(parents=True, exist_ok=True)


def export_model(src, out, to: str = "llama") -> Path:
    """Write `out`, a `to` ("llama" or "qwen3") checkpoint with the weights of the hfscratch folder `src`."""
    src, out = Path(src), Path(out)
    if to not in TARGETS:
        raise ConfigError(f"cannot export to '{to}'; choose one of {', '.join(TARGETS)}")
    src, config = check_model_folder(src)
    if config.get("model_type") != "hfscratch":
        raise CheckpointError(
            f"{src} is a '{config.get('model_type')}' checkpoint, not an hfscratch one; export converts hfscratch "
            "models (a stock model already loads without remote code)"
        )
    reasons = _refusals(config, to)
    if reasons:
        raise ConfigError(f"cannot export {src} to {to}: " + "; ".join(reasons))
    _prepare_out(out)
    try:
        target = target_config(config, to)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{src}/config.json cannot be expressed as a {to} config: {err}") from err
    _check_tensors(src, target)

    # Build in a sibling temp folder, then rename: an interrupted export never leaves a half-written OUT.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        target.save_pretrained(tmp)
        # Everything but the config (written above), hidden files, remote code and pickles. README.md is copied
        # so the new card keeps its model-index entries.
        for item in sorted(src.iterdir()):
            skip = item.name.startswith(".") or item.suffix == ".py" or matches_any(item.name, PICKLE_PATTERNS)
            if item.is_file() and item.name != "config.json" and not skip:
                shutil.copy2(item, tmp / item.name)
        write_model_card(tmp, base_model=None, extra={
            "model_name": out.name,
            "description": f"Exported from the hfscratch checkpoint `{src.name}` to the stock `{target.architectures[0]}` "
                           "architecture (weights copied unchanged; no remote code needed).",
        })
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it owner-only; give OUT the usual folder permissions
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="hfscratch model folder (save_pretrained output)")
    parser.add_argument("out", help="new output folder (must not exist or be empty)")
    parser.add_argument("--to", default="llama", choices=TARGETS, help="target architecture (qwen3 for models with QK-norm)")


def run(args: argparse.Namespace) -> int:
    out = export_model(args.path, args.out, to=args.to)
    config = json.loads((out / "config.json").read_text())
    print(f"exported {args.path} -> {out} ({config['architectures'][0]}, loads without trust_remote_code)")
    return 0


__all__ = ["add_arguments", "export_model", "run", "target_config"]
