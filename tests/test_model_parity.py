"""Parity with transformers' own Llama and Qwen3: copying weights must give the same logits and loss."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from hfscratch import HfscratchConfig, HfscratchForCausalLM

SHAPES = [  # (num_attention_heads, num_key_value_heads, tie_word_embeddings)
    pytest.param(4, 4, False, id="mha-untied"),
    pytest.param(4, 4, True, id="mha-tied"),
    pytest.param(4, 2, False, id="gqa-untied"),
    pytest.param(4, 2, True, id="gqa-tied"),
    pytest.param(4, 1, False, id="mqa-untied"),
]


def _pair(reference_config_cls, reference_model_cls, heads, kv_heads, tie, **extra):
    torch.manual_seed(0)
    shape = dict(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=heads,
        num_key_value_heads=kv_heads, tie_word_embeddings=tie, max_position_embeddings=128, rms_norm_eps=1e-6,
    )
    ours = HfscratchForCausalLM(HfscratchConfig(**shape, **extra, rope_parameters={"rope_type": "default", "rope_theta": 500.0}))
    ref_shape = dict(shape, rope_parameters={"rope_type": "default", "rope_theta": 500.0}, head_dim=16)
    reference = reference_model_cls(reference_config_cls(**ref_shape))
    # Randomise norms too, so a swapped or missing norm gain would show up.
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    result = reference.load_state_dict(ours.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return ours.eval(), reference.eval()


@pytest.mark.parametrize("heads, kv_heads, tie", SHAPES)
def test_llama_parity(heads, kv_heads, tie):
    ours, llama = _pair(LlamaConfig, LlamaForCausalLM, heads, kv_heads, tie)
    x = torch.randint(0, 97, (3, 33))
    with torch.no_grad():
        a, b = ours(x, labels=x), llama(x, labels=x)
    assert torch.allclose(a.logits, b.logits, atol=1e-5, rtol=0)
    assert abs(a.loss.item() - b.loss.item()) < 1e-6
    if tie:
        assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()


def test_llama_parity_with_padding_mask():
    ours, llama = _pair(LlamaConfig, LlamaForCausalLM, 4, 2, False)
    x = torch.randint(0, 97, (2, 20))
    mask = torch.ones_like(x)
    mask[0, :5] = 0  # left padding
    with torch.no_grad():
        a, b = ours(x, attention_mask=mask).logits, llama(x, attention_mask=mask).logits
    assert torch.allclose(a[:, 5:], b[:, 5:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_qwen3_parity_with_qk_norm(kv_heads):
    ours, qwen = _pair(Qwen3Config, Qwen3ForCausalLM, 4, kv_heads, False, qk_norm=True)
    x = torch.randint(0, 97, (2, 29))
    with torch.no_grad():
        a, b = ours(x, labels=x), qwen(x, labels=x)
    assert torch.allclose(a.logits, b.logits, atol=1e-5, rtol=0)
    assert abs(a.loss.item() - b.loss.item()) < 1e-6


def test_parity_fails_when_weights_differ():
    """Guard against a vacuous parity test: perturbing one weight must break it."""
    ours, llama = _pair(LlamaConfig, LlamaForCausalLM, 4, 2, False)
    with torch.no_grad():
        llama.model.layers[1].mlp.up_proj.weight[0, 0] += 0.5
    x = torch.randint(0, 97, (1, 16))
    with torch.no_grad():
        assert not torch.allclose(ours(x).logits, llama(x).logits, atol=1e-5)


def _reward_pair(heads=4, kv_heads=2):
    """hfscratch and Llama sequence classifiers (one score: a reward model) with the same weights."""
    from transformers import LlamaForSequenceClassification

    from hfscratch import HfscratchForSequenceClassification

    torch.manual_seed(0)
    shape = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=heads,
                 num_key_value_heads=kv_heads, max_position_embeddings=128, rms_norm_eps=1e-6, num_labels=1,
                 pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    ours = HfscratchForSequenceClassification(HfscratchConfig(**shape)).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    reference = LlamaForSequenceClassification(LlamaConfig(**shape, head_dim=16)).eval()
    result = reference.load_state_dict(ours.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return ours, reference


def test_reward_head_matches_llama_including_right_padding():
    ours, llama = _reward_pair()
    x = torch.randint(1, 97, (4, 21))
    mask = torch.ones_like(x)
    for row, length in enumerate((21, 15, 9, 3)):  # right-padded rows of different lengths
        x[row, length:] = 0
        mask[row, length:] = 0
    with torch.no_grad():
        a, b = ours(x, attention_mask=mask).logits, llama(x, attention_mask=mask).logits
        alone = ours(x[2:3, :9]).logits  # the padded row scored on its own
    assert a.shape == (4, 1)
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    assert torch.allclose(a[2], alone[0], atol=1e-5, rtol=0)  # read at the last real token, not the padding


def test_reward_head_saves_loads_and_trains_like_llama(tmp_path):
    from transformers import AutoModelForSequenceClassification

    ours, llama = _reward_pair()
    ours.save_pretrained(tmp_path / "rm")
    config = (tmp_path / "rm" / "config.json").read_text()
    assert '"AutoModelForSequenceClassification": "modeling_hfscratch.HfscratchForSequenceClassification"' in config
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert type(loaded).__name__ == "HfscratchForSequenceClassification"
    x, labels = torch.randint(1, 97, (3, 12)), torch.tensor([0.5, -1.0, 2.0])
    a, b = loaded(x, labels=labels), llama(x, labels=labels)
    assert torch.allclose(a.logits, b.logits, atol=1e-5, rtol=0) and abs(a.loss.item() - b.loss.item()) < 1e-5
