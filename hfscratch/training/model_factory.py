"""The model a pretraining run starts from: a fresh `HfscratchForCausalLM` or a saved folder, checked against the data."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ..configuration_hfscratch import HfscratchConfig
from ..errors import ConfigError
from ..modeling_hfscratch import HfscratchForCausalLM
from .config import MODEL_PRESETS, ModelConfig

# ModelConfig fields passed to HfscratchConfig as they are when set.
OVERRIDABLE_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "max_position_embeddings", "position_embedding_type", "norm_type", "mlp_type", "qk_norm", "tie_word_embeddings",
    "initializer_range",
)


def round_up(n: int, multiple: int) -> int:
    return ((n + multiple - 1) // multiple) * multiple


def max_positions(model_args: ModelConfig) -> int:
    """The longest sequence the model will take, known before the data is prepared or the model built."""
    if model_args.init_from:
        path = Path(model_args.init_from)
        if not (path / "config.json").is_file():
            raise ConfigError(f"init_from {path} is not a save_pretrained folder (no config.json); pass a model folder")
        return AutoConfig.from_pretrained(path).max_position_embeddings
    return model_args.max_position_embeddings or MODEL_PRESETS[model_args.model_size]["max_position_embeddings"]


def build_model(model_args: ModelConfig, tokenizer):
    """A fresh `HfscratchForCausalLM` from a preset + overrides, or `init_from` a saved folder."""
    tokenizer_size = len(tokenizer)
    if model_args.init_from:
        model = AutoModelForCausalLM.from_pretrained(model_args.init_from, attn_implementation=model_args.attn_implementation, dtype=torch.float32)
        config = model.config
    else:
        preset = dict(MODEL_PRESETS[model_args.model_size])
        style = model_args.architecture or preset.pop("style", "llama")
        preset.pop("style", None)
        overrides = {name: value for name in OVERRIDABLE_FIELDS if (value := getattr(model_args, name)) is not None}
        if model_args.num_attention_heads is not None and model_args.num_key_value_heads is None:
            overrides["num_key_value_heads"] = model_args.num_attention_heads
        rope_theta = model_args.rope_theta or preset.pop("rope_theta", None)
        preset.pop("rope_theta", None)
        kwargs = {**preset, **overrides}
        if rope_theta is not None:
            kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": float(rope_theta)}
        if model_args.model_vocab_size is not None:
            if model_args.model_vocab_size < tokenizer_size:
                raise ConfigError(f"model_vocab_size {model_args.model_vocab_size} is smaller than the tokenizer's "
                                  f"{tokenizer_size} tokens; raise model_vocab_size or drop it (it defaults to the "
                                  "tokenizer size)")
            vocab = model_args.model_vocab_size
        else:
            vocab = round_up(tokenizer_size, model_args.pad_vocab_to_multiple_of)
        kwargs.update(vocab_size=vocab, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id)
        try:
            config = HfscratchConfig.gpt2_style(**kwargs) if style == "gpt2" else HfscratchConfig(**kwargs)
        except ValueError as err:
            raise ConfigError(f"invalid model configuration: {err}") from None
        model = HfscratchForCausalLM._from_config(config, attn_implementation=model_args.attn_implementation, dtype=torch.float32)
    if config.vocab_size < tokenizer_size:
        raise ConfigError(f"tokenizer has {tokenizer_size} tokens but the model's vocab_size is {config.vocab_size}; "
                          "use the tokenizer the model was trained with")
    return model
