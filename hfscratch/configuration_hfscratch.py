"""Configuration of the hfscratch decoder.

Field names follow `LlamaConfig` so PEFT target names, Llama export and parity tests work by name.
The architecture switches (`position_embedding_type`, `norm_type`, `mlp_type`, `qk_norm`) default to
Llama; `HfscratchConfig.gpt2_style(...)` gives the GPT-2 family (learned positions, LayerNorm, GELU).

This file imports only transformers: `save_pretrained` copies it next to the weights so a folder
loads with `trust_remote_code=True` where hfscratch is not installed.
"""

from transformers.configuration_utils import PreTrainedConfig

_CHOICES = {
    "position_embedding_type": ("rope", "learned"),
    "norm_type": ("rmsnorm", "layernorm"),
    "mlp_type": ("swiglu", "gelu"),
}


class HfscratchConfig(PreTrainedConfig):
    model_type = "hfscratch"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the output field: `cache` from transformers 5.24
    # Same shape as Llama's plan, so `from_pretrained(..., tp_plan="auto")` shards across GPUs.
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 32000
    hidden_size: int = 512
    intermediate_size: int | None = None
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str | None = None
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = True
    rope_parameters: dict | None = None
    attention_bias: bool = False
    attention_dropout: float | int = 0.0
    mlp_bias: bool = False
    # architecture switches (defaults are Llama)
    position_embedding_type: str = "rope"
    norm_type: str = "rmsnorm"
    mlp_type: str = "swiglu"
    qk_norm: bool = False
    # scale the init of o_proj/down_proj by 1/sqrt(2 * num_hidden_layers) (GPT-2 / Megatron practice)
    scale_residual_init: bool = True

    def __post_init__(self, **kwargs):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"HfscratchConfig.{name} must be a positive integer, got {value!r}")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"HfscratchConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.hidden_act is None:
            self.hidden_act = "silu" if self.mlp_type == "swiglu" else "gelu_new"
        if self.intermediate_size is None:
            # SwiGLU has three matrices: 8/3 * d keeps the parameter count of a 4 * d GELU MLP; round to 64.
            self.intermediate_size = 4 * self.hidden_size if self.mlp_type == "gelu" else 64 * ((8 * self.hidden_size // 3 + 63) // 64)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        for name in ("intermediate_size", "num_key_value_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"HfscratchConfig.{name} must be a positive integer, got {value!r}")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads != 0:
                raise ValueError(
                    f"HfscratchConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                    f"({self.num_attention_heads}), or set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if not isinstance(self.head_dim, int) or self.head_dim <= 0:
            raise ValueError(f"HfscratchConfig.head_dim must be a positive integer, got {self.head_dim!r}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"HfscratchConfig.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads}) (MHA: equal, GQA: a divisor, MQA: 1)"
            )
        if self.position_embedding_type == "rope" and self.head_dim % 2 != 0:
            raise ValueError(f"HfscratchConfig.head_dim ({self.head_dim}) must be even for RoPE (rotary pairs dimensions)")
        if not 0.0 <= float(self.attention_dropout) < 1.0:
            raise ValueError(f"HfscratchConfig.attention_dropout must be in [0, 1), got {self.attention_dropout!r}")
        if self.rms_norm_eps <= 0:
            raise ValueError(f"HfscratchConfig.rms_norm_eps must be positive, got {self.rms_norm_eps!r}")
        if self.rope_parameters is None:
            self.rope_parameters = {"rope_type": "default", "rope_theta": kwargs.pop("rope_theta", 10000.0)}
        super().__post_init__(**kwargs)

    @classmethod
    def gpt2_style(cls, **kwargs) -> "HfscratchConfig":
        """GPT-2 family: learned absolute positions, LayerNorm, GELU MLP, biases, tied embeddings."""
        defaults = dict(
            position_embedding_type="learned", norm_type="layernorm", mlp_type="gelu",
            attention_bias=True, mlp_bias=True, rms_norm_eps=1e-5, tie_word_embeddings=True,
        )
        defaults.update(kwargs)
        return cls(**defaults)


__all__ = ["HfscratchConfig"]
