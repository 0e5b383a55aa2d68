"""The one way a finished model is loaded to be used (chat, evaluation): a folder or Hub id -> (model, tokenizer),
so "auto" device/dtype and the errors for a bad folder are the same everywhere (training stages load their own way).
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from . import modeling_hfscratch  # noqa: F401  (registers HfscratchForCausalLM with the Auto classes)
from .devices import resolve_device, resolve_dtype
from .errors import CheckpointError, ConfigError


def check_model_source(source: str | Path) -> str:
    """A local folder with config.json, or something that can only be a Hub id; else a one-line error."""
    local = Path(source).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise CheckpointError(f"{local} is not a model folder (no config.json); pass a folder written by save_pretrained")
        return str(local)
    if str(source).startswith((".", "/", "~")) or str(source).count("/") > 1:
        raise CheckpointError(f"model folder {source} does not exist; pass a folder written by save_pretrained or a Hub id")
    return str(source)


def load_tokenizer_from(source: str | Path, trust_remote_code: bool = False):
    try:
        return AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"no usable tokenizer in {source} ({str(err).strip().splitlines()[0][:120]}); save it next to "
                              "the model with tokenizer.save_pretrained(folder) or pass the tokenizer's folder") from None


def load_for_inference(model_or_path, tokenizer=None, device=None, dtype="auto", trust_remote_code: bool = False):
    """(model, tokenizer) on `device` in eval mode. An in-memory model is passed through (its tokenizer is required);
    `tokenizer` may be a tokenizer, a folder, or None for the model's own."""
    if not isinstance(model_or_path, (str, Path)):
        if tokenizer is None:
            raise ConfigError("an in-memory model needs its tokenizer: pass tokenizer=...")
        if isinstance(tokenizer, (str, Path)):
            tokenizer = load_tokenizer_from(tokenizer, trust_remote_code)
        if device is not None:
            model_or_path.to(device)
        return model_or_path, tokenizer
    source = check_model_source(model_or_path)
    device = resolve_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(dtype, device), trust_remote_code=trust_remote_code)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise CheckpointError(f"{source} needs its own modeling code: pass --trust-remote-code if you trust it") from None
        raise CheckpointError(f"cannot load the model in {source}: {str(err).strip().splitlines()[0]}") from None
    except OSError as err:
        raise CheckpointError(f"could not load {source}: {str(err).strip().splitlines()[0]}; check the path or Hub id "
                              "(offline: only local folders), or re-save it with save_pretrained") from None
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer_from(tokenizer or source, trust_remote_code)
    return model.to(device).eval(), tokenizer


# End-of-turn markers of common chat templates: generation stops on them as well as on eos.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def stop_token_ids(model, tokenizer) -> list[int]:
    """The ids that end a reply: the generation config's eos, the tokenizer's eos and known end-of-turn markers."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = (eos if isinstance(eos, list) else [eos]) + [tokenizer.eos_token_id]
    vocab = tokenizer.get_vocab()
    ids += [vocab[token] for token in END_OF_TURN_TOKENS if token in vocab]
    return list(dict.fromkeys(i for i in ids if i is not None))
