"""`hfscratch export`: stock LlamaForCausalLM / Qwen3ForCausalLM load the result without remote code and
compute the same logits and greedy generations; configs the target cannot express are refused."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, Qwen3ForCausalLM

from hfscratch import HfscratchConfig, HfscratchForCausalLM
from hfscratch.cli import main
from hfscratch.errors import CheckpointError, ConfigError
from hfscratch.export import export_model
from tests.helpers import tiny_config


def save_hfscratch(folder, config, tokenizer=None, seed=0):
    torch.manual_seed(seed)
    model = HfscratchForCausalLM(config).eval()
    with torch.no_grad():  # move norms/biases off their init values so every tensor matters
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return model


@pytest.mark.parametrize(
    ("overrides", "target", "stock_class"),
    [
        ({}, "llama", LlamaForCausalLM),
        ({"num_key_value_heads": 1, "tie_word_embeddings": False}, "llama", LlamaForCausalLM),
        ({"num_key_value_heads": 2, "tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True}, "llama", LlamaForCausalLM),
        ({"qk_norm": True, "tie_word_embeddings": False, "head_dim": 32}, "qwen3", Qwen3ForCausalLM),
    ],
    ids=["llama-default", "llama-mqa-untied", "llama-gqa-tied-bias", "qwen3-qknorm"],
)
def test_export_matches_logits_and_greedy_generation(tmp_path, tiny_tokenizer, overrides, target, stock_class):
    source = save_hfscratch(tmp_path / "src", tiny_config(tiny_tokenizer, **overrides), tiny_tokenizer)
    out = export_model(tmp_path / "src", tmp_path / "out", to=target)

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == target and "auto_map" not in config
    assert not list(out.glob("*.py")), "exported folder must not carry remote code"
    exported = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False).eval()
    assert type(exported) is stock_class
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tiny_tokenizer.get_vocab()

    ids = torch.randint(0, tiny_tokenizer.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, source(ids).logits, rtol=0, atol=1e-5)
        prompt = ids[:, :6]
        kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False, pad_token_id=0)
        assert torch.equal(exported.generate(prompt, **kwargs), source.generate(prompt, **kwargs))
    card = (out / "README.md").read_text()
    assert "trust_remote_code" not in card and stock_class.__name__ in card
    assert f"path/to/{out.name}" in card and "path/to/." not in card  # the loading snippet names the export


@pytest.mark.parametrize(
    ("config", "target", "reason"),
    [
        (HfscratchConfig.gpt2_style(vocab_size=512, hidden_size=64, num_hidden_layers=1, num_attention_heads=4), "llama", "learned absolute positions"),
        (HfscratchConfig(vocab_size=512, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, norm_type="layernorm"), "llama", "LayerNorm"),
        (HfscratchConfig(vocab_size=512, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, mlp_type="gelu"), "llama", "GELU"),
        (HfscratchConfig(vocab_size=512, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, qk_norm=True), "llama", "--to qwen3"),
        (HfscratchConfig(vocab_size=512, hidden_size=64, num_hidden_layers=1, num_attention_heads=4), "qwen3", "--to llama"),
        (HfscratchConfig(vocab_size=512, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, qk_norm=True, mlp_bias=True), "qwen3", "MLP biases"),
    ],
    ids=["gpt2-style", "layernorm", "gelu", "qknorm-to-llama", "no-qknorm-to-qwen3", "mlp-bias-to-qwen3"],
)
def test_refuses_what_the_target_cannot_express(tmp_path, config, target, reason):
    save_hfscratch(tmp_path / "src", config)
    with pytest.raises(ConfigError, match=reason):
        export_model(tmp_path / "src", tmp_path / "out", to=target)
    assert not (tmp_path / "out").exists()


def test_not_an_hfscratch_checkpoint(tmp_path, tiny_tokenizer):
    save_hfscratch(tmp_path / "src", tiny_config(tiny_tokenizer))
    export_model(tmp_path / "src", tmp_path / "llama")
    with pytest.raises(CheckpointError, match="not an hfscratch one"):
        export_model(tmp_path / "llama", tmp_path / "again")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        export_model(tmp_path / "empty", tmp_path / "again")


def test_never_overwrites_and_cli_errors_are_one_line(tmp_path, tiny_tokenizer, capsys):
    save_hfscratch(tmp_path / "src", tiny_config(tiny_tokenizer))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("user data")
    with pytest.raises(CheckpointError, match="not empty"):
        export_model(tmp_path / "src", tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "taken"]  # no temp folder left behind

    (tmp_path / "empty_out").mkdir()  # an existing empty folder is fine
    assert main(["export", str(tmp_path / "src"), str(tmp_path / "empty_out"), "--to", "llama"]) == 0
    assert (tmp_path / "empty_out" / "model.safetensors").is_file()
    assert main(["export", str(tmp_path / "src"), str(tmp_path / "q"), "--to", "qwen3"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err and "QK-norm" in err
