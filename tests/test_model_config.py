"""HfscratchConfig: Llama field names, architecture switches, and one-line ValueErrors for invalid shapes."""

import pytest

from hfscratch import HfscratchConfig


def test_defaults_are_llama_style():
    cfg = HfscratchConfig(hidden_size=128, num_attention_heads=4)
    assert cfg.position_embedding_type == "rope" and cfg.norm_type == "rmsnorm" and cfg.mlp_type == "swiglu"
    assert cfg.num_key_value_heads == 4 and cfg.head_dim == 32 and cfg.hidden_act == "silu"
    assert cfg.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    # SwiGLU width 8/3 * d rounded up to a multiple of 64
    assert cfg.intermediate_size == 384


def test_gpt2_style_switches():
    cfg = HfscratchConfig.gpt2_style(hidden_size=64, num_attention_heads=4)
    assert (cfg.position_embedding_type, cfg.norm_type, cfg.mlp_type) == ("learned", "layernorm", "gelu")
    assert cfg.intermediate_size == 256 and cfg.attention_bias and cfg.mlp_bias


def test_round_trip_through_dict():
    cfg = HfscratchConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=1, qk_norm=True, rope_theta=500.0)
    again = HfscratchConfig.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()
    assert again.rope_parameters["rope_theta"] == 500.0


@pytest.mark.parametrize(
    "kwargs, field, rule",
    [
        (dict(hidden_size=100, num_attention_heads=8), "hidden_size", "divisible by num_attention_heads"),
        (dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=3), "num_attention_heads", "divisible by num_key_value_heads"),
        (dict(hidden_size=60, num_attention_heads=4, head_dim=15), "head_dim", "even for RoPE"),
        (dict(hidden_size=0), "hidden_size", "positive"),
        (dict(vocab_size=-5), "vocab_size", "positive"),
        (dict(num_hidden_layers=0), "num_hidden_layers", "positive"),
        (dict(intermediate_size=0), "intermediate_size", "positive"),
        (dict(norm_type="batchnorm"), "norm_type", "one of"),
        (dict(position_embedding_type="alibi"), "position_embedding_type", "one of"),
        (dict(mlp_type="relu"), "mlp_type", "one of"),
        (dict(attention_dropout=1.5), "attention_dropout", "[0, 1)"),
    ],
)
def test_invalid_configs_name_field_and_rule(kwargs, field, rule):
    with pytest.raises(ValueError) as err:
        HfscratchConfig(**kwargs)
    message = str(err.value)
    assert field in message and rule in message and "\n" not in message


def test_odd_head_dim_is_fine_with_learned_positions():
    cfg = HfscratchConfig.gpt2_style(hidden_size=60, num_attention_heads=4)
    assert cfg.head_dim == 15
