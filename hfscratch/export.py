"""`hfscratch export PATH OUT --to llama|qwen3|gguf`: a checkpoint stock transformers (or llama.cpp) loads as is.

hfscratch uses Llama's parameter names and, with the default switches, computes what `LlamaForCausalLM` computes
(`qk_norm=True`: `Qwen3ForCausalLM`), so export is a config translation plus a verbatim copy of the safetensors
files: the logits are bit-identical. Every tensor name and shape is first checked against the target built on the
meta device, so a checkpoint it cannot hold is refused instead of loading with silently re-initialised weights.

`--to gguf` writes one GGUF file for llama.cpp with the `gguf` package: Llama-layout tensors, and the trained
byte-level BPE written into the metadata (tokens, merges, special tokens, and the pre-tokenizer named from
tokenizer.json's own settings), so llama.cpp needs no hash-table entry for a tokenizer it has never seen.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import gguf
import numpy as np
from safetensors import safe_open
from transformers import AutoTokenizer

from .errors import CheckpointError, ConfigError
from .hub import PICKLE_PATTERNS, check_model_folder, matches_any
from .model_card import safetensors_shapes, write_model_card

TARGETS = ("llama", "qwen3", "gguf")
GGUF_DTYPES = {"f32": (np.float32, gguf.LlamaFileType.ALL_F32), "f16": (np.float16, gguf.LlamaFileType.MOSTLY_F16)}
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


# hfscratch (= Llama) tensor names -> llama.cpp's; `{i}` is the layer.
GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight", "input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "self_attn.q_proj.weight": "blk.{i}.attn_q.weight", "self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "self_attn.v_proj.weight": "blk.{i}.attn_v.weight", "self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight", "mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "mlp.up_proj.weight": "blk.{i}.ffn_up.weight", "mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}


def rope_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """transformers rotates the two halves of each head (rotate_half); llama.cpp's Llama rotates adjacent pairs.
    Reordering the q/k projection rows per head turns one layout into the other (as llama.cpp's converter does)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for the pre-tokenizer, read from tokenizer.json (not hashed from its output)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if tokenizer_json.get("model", {}).get("type") != "BPE":
        raise ConfigError("GGUF export covers byte-level BPE tokenizers (as hfscratch trains); this one is "
                          f"{tokenizer_json.get('model', {}).get('type')}")
    if [s.get("type") for s in steps] == ["ByteLevel"] and steps[0].get("use_regex", True) \
            and not steps[0].get("add_prefix_space", False):
        return "gpt-2"  # GPT-2's split regex, then bytes to unicode: llama.cpp's LLAMA_VOCAB_PRE_TYPE_GPT2
    raise ConfigError(f"the pre-tokenizer {json.dumps(pre)[:120]} has no llama.cpp equivalent; GGUF export covers "
                      "GPT-2-style byte-level BPE (ByteLevel with its regex, no prefix space)")


def _gguf_vocabulary(src: Path, vocab_rows: int):
    """(tokens by id, token types, merges, tokenizer) with the list padded to the embedding's rows."""
    tokenizer = AutoTokenizer.from_pretrained(src)
    data = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    pre = gguf_pre_tokenizer(data)
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if len(by_id) > vocab_rows:
        raise CheckpointError(f"the tokenizer has {len(by_id)} tokens but the model only {vocab_rows} embedding rows")
    special = set(tokenizer.all_special_ids)
    added = {index for index, token in tokenizer.added_tokens_decoder.items() if not token.special}
    tokens, types = [], []
    for index in range(vocab_rows):
        if index not in by_id:  # rows with no token (embedding padded to a multiple): never produced
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[index])
        types.append(gguf.TokenType.CONTROL if index in special else
                     gguf.TokenType.USER_DEFINED if index in added else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    return tokens, types, merges, pre, tokenizer


def export_gguf(src, out, dtype: str = "f32") -> Path:
    """Write the GGUF file `out` (llama.cpp's Llama architecture) from the hfscratch or Llama folder `src`."""
    src, out = Path(src), Path(out)
    if out.suffix != ".gguf":
        raise ConfigError(f"for --to gguf, OUT is the file to write and ends in .gguf (e.g. {out.name}.gguf)")
    if out.exists():
        raise CheckpointError(f"{out} already exists; choose a new file name (nothing is overwritten)")
    if dtype not in GGUF_DTYPES:
        raise ConfigError(f"GGUF dtype '{dtype}' is not supported; choose one of {', '.join(GGUF_DTYPES)}")
    src, config = check_model_folder(src)
    if config.get("model_type") not in ("hfscratch", "llama"):
        raise CheckpointError(f"{src} is a '{config.get('model_type')}' checkpoint; GGUF export takes hfscratch or "
                              "Llama folders (for other models use llama.cpp's convert_hf_to_gguf.py)")
    reasons = _refusals(config, "llama")
    reasons += [f"it has {name.replace('_', ' ')}, which this export does not map" for name in
                ("attention_bias", "mlp_bias", "rope_scaling") if config.get(name)]
    if reasons:
        raise ConfigError(f"cannot export {src} to GGUF (llama.cpp's Llama): " + "; ".join(reasons))
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    tokens, types, merges, pre, tokenizer = _gguf_vocabulary(src, config["vocab_size"])
    float_type, file_type = GGUF_DTYPES[dtype]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, "llama")
    try:
        writer.add_name(src.name)
        writer.add_context_length(config["max_position_embeddings"])
        writer.add_embedding_length(config["hidden_size"])
        writer.add_block_count(config["num_hidden_layers"])
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get(
            "rope_theta", 10000.0)))
        writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
        writer.add_vocab_size(config["vocab_size"])
        writer.add_file_type(file_type)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        for name in ("bos", "eos", "pad"):
            if (token_id := getattr(tokenizer, f"{name}_token_id")) is not None:
                getattr(writer, f"add_{name}_token_id")(token_id)
        writer.add_add_bos_token(tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id])
        if tokenizer.chat_template:
            writer.add_chat_template(tokenizer.chat_template)
        for file in sorted(src.glob("*.safetensors")):
            with safe_open(file, framework="pt") as weights:
                for name in weights.keys():  # noqa: SIM118 (safe_open is not iterable)
                    layer, _, rest = name.removeprefix("model.layers.").partition(".")
                    key = rest if name.startswith("model.layers.") else name
                    if key not in GGUF_NAMES or (name == "lm_head.weight" and config.get("tie_word_embeddings")):
                        continue  # tied: llama.cpp reads the embedding when output.weight is absent
                    array = weights.get_tensor(name).float().numpy()
                    if key == "self_attn.q_proj.weight":
                        array = rope_permute(array, heads)
                    elif key == "self_attn.k_proj.weight":
                        array = rope_permute(array, kv_heads)
                    # Norm gains stay float32 (llama.cpp expects it); matrices take the chosen type.
                    writer.add_tensor(GGUF_NAMES[key].format(i=layer), array.astype(
                        np.float32 if array.ndim == 1 else float_type))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def export_model(src, out, to: str = "llama") -> Path:
    """Write `out`, a `to` ("llama" or "qwen3") checkpoint with the weights of the hfscratch folder `src`."""
    src, out = Path(src), Path(out)
    if to not in TARGETS:
        raise ConfigError(f"cannot export to '{to}'; choose one of {', '.join(TARGETS)}")
    if to == "gguf":
        return export_gguf(src, out)
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
            "model_name": out.name, "repo_id": f"path/to/{out.name}",  # the final name, not the temp folder's
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
    parser.add_argument("out", help="new output folder (must not exist or be empty); for --to gguf the .gguf file")
    parser.add_argument("--to", default="llama", choices=TARGETS,
                        help="target: llama, qwen3 (models with QK-norm), or gguf (one file for llama.cpp)")
    parser.add_argument("--gguf-dtype", default="f32", choices=list(GGUF_DTYPES), help="GGUF matrix type (default f32)")


def run(args: argparse.Namespace) -> int:
    if args.to == "gguf":
        out = export_gguf(args.path, args.out, dtype=args.gguf_dtype)
        print(f"exported {args.path} -> {out} (GGUF, llama.cpp's Llama architecture, {out.stat().st_size / 2**20:.1f} MiB); "
              f"run it with: llama-cli -m {out}")
        return 0
    out = export_model(args.path, args.out, to=args.to)
    config = json.loads((out / "config.json").read_text())
    print(f"exported {args.path} -> {out} ({config['architectures'][0]}, loads without trust_remote_code)")
    return 0


__all__ = ["add_arguments", "export_gguf", "export_model", "run", "target_config"]
