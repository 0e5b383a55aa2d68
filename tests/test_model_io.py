"""Save/load round trips, remote code without hfscratch, pipelines, and a GPT-2-style run on real text."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, pipeline

from hfscratch import HfscratchConfig, HfscratchForCausalLM
from tests.helpers import tiny_config


def _model(tokenizer, **overrides):
    torch.manual_seed(0)
    return HfscratchForCausalLM(tiny_config(tokenizer, **overrides)).eval()


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_round_trip_is_exact(tmp_path, tiny_tokenizer, tie):
    model = _model(tiny_tokenizer, tie_word_embeddings=tie, rope_parameters={"rope_type": "default", "rope_theta": 1234.0})
    model.save_pretrained(tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert {"configuration_hfscratch.py", "modeling_hfscratch.py"} <= set(files)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_hfscratch.HfscratchForCausalLM"
    stored = load_file(tmp_path / "model.safetensors")
    assert ("lm_head.weight" in stored) == (not tie)

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, HfscratchForCausalLM)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    # inv_freq is a non-persistent buffer, rebuilt after meta-device loading from the saved rope_theta
    assert torch.equal(loaded.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    assert (loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()) == tie
    x = torch.randint(0, len(tiny_tokenizer), (2, 12))
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)


def test_auto_config_and_model_registered():
    cfg = AutoConfig.for_model("hfscratch", hidden_size=32, num_attention_heads=2)
    assert isinstance(cfg, HfscratchConfig)
    assert isinstance(AutoModelForCausalLM.from_config(cfg), HfscratchForCausalLM)


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import sys, json, importlib.abc
    class BlockHfscratch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hfscratch" or name.startswith("hfscratch."):
                raise ImportError("hfscratch is deliberately not importable here")
    sys.meta_path.insert(0, BlockHfscratch())
    try:
        import hfscratch  # noqa
        raise SystemExit("hfscratch was importable: the test would prove nothing")
    except ImportError:
        pass
    import torch
    from transformers import AutoModelForCausalLM
    folder, ids = sys.argv[1], json.loads(sys.argv[2])
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits
    result = {"cls": type(model).__name__, "logits": logits.flatten().tolist()}
    if hasattr(model, "generate"):  # the causal LM: the lean decoding loop and transformers' own
        result["lean"] = model.generate(torch.tensor(ids), max_new_tokens=10, do_sample=False, eos_token_id=None).tolist()
        model.lean_decoding = False
        result["reference"] = model.generate(torch.tensor(ids), max_new_tokens=10, do_sample=False, eos_token_id=None).tolist()
    print(json.dumps(result))
    """
)


def test_trust_remote_code_without_hfscratch(tmp_path, tiny_tokenizer):
    model = _model(tiny_tokenizer, qk_norm=True)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    ids = [[5, 17, 42, 9, 100]]
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", REMOTE_CODE_SCRIPT, str(folder), json.dumps(ids)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["cls"] == "HfscratchForCausalLM"
    with torch.no_grad():
        expected = model(torch.tensor(ids)).logits.flatten()
    assert torch.equal(torch.tensor(result["logits"]), expected)
    # the copied file carries the lean decoding loop too: same tokens as transformers' loop and as the installed class
    generated = model.generate(torch.tensor(ids), max_new_tokens=10, do_sample=False, eos_token_id=None).tolist()
    assert result["lean"] == result["reference"] == generated


def test_text_generation_pipeline(tmp_path, tiny_tokenizer):
    model = _model(tiny_tokenizer)
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path), tokenizer=str(tmp_path))
    out = generator("To be, or not", max_new_tokens=8, do_sample=False)
    assert out[0]["generated_text"].startswith("To be, or not")
    assert len(out[0]["generated_text"]) > len("To be, or not")


def test_gpt2_style_trains_on_real_text(tiny_tokenizer, shakespeare_text):
    torch.manual_seed(0)
    config = HfscratchConfig.gpt2_style(
        vocab_size=len(tiny_tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, pad_token_id=tiny_tokenizer.pad_token_id,
    )
    model = HfscratchForCausalLM(config).train()
    ids = torch.tensor(tiny_tokenizer(shakespeare_text[:200_000])["input_ids"])
    train, held_out = ids[: int(0.9 * len(ids))], ids[int(0.9 * len(ids)):]
    block, batch = 64, 16

    def held_out_loss():
        model.eval()
        blocks = held_out[: (len(held_out) // block) * block].view(-1, block)[:32]
        with torch.no_grad():
            loss = model(blocks, labels=blocks).loss.item()
        model.train()
        return loss

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    before = held_out_loss()
    for _ in range(60):
        starts = torch.randint(0, len(train) - block, (batch,), generator=generator)
        x = torch.stack([train[s: s + block] for s in starts])
        loss = model(x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = held_out_loss()
    assert after < before - 1.0, (before, after)  # random init is ~ln(512)=6.2 nats; 60 steps get well below


def test_reward_model_loads_as_remote_code_without_hfscratch(tmp_path, tiny_tokenizer):
    from hfscratch import HfscratchForSequenceClassification

    torch.manual_seed(0)
    model = HfscratchForSequenceClassification(tiny_config(tiny_tokenizer, num_labels=1)).eval()
    folder = tmp_path / "reward_model"
    model.save_pretrained(folder)
    ids = [[5, 17, 42, 9, 100]]
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    script = REMOTE_CODE_SCRIPT.replace("AutoModelForCausalLM", "AutoModelForSequenceClassification")
    proc = subprocess.run([sys.executable, "-I", "-c", script, str(folder), json.dumps(ids)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["cls"] == "HfscratchForSequenceClassification"
    with torch.no_grad():
        assert torch.equal(torch.tensor(result["logits"]), model(torch.tensor(ids)).logits.flatten())
