"""Pretraining loop, in process, on TinyShakespeare with a tiny model: learning, accumulation, stability,
checkpoints, final folder and bad input. Subprocess tests (kill/resume, DDP, recipe) are in test_training_dist.py."""

from __future__ import annotations

import errno
import json
import math

import pytest
import torch
from datasets import Dataset, DatasetDict

from hfscratch.errors import CheckpointError, ConfigError, DataError
from hfscratch.training import (
    DataConfig,
    ModelConfig,
    PretrainConfig,
    TrainConfig,
    TrainingData,
    TrainingDivergedError,
    pretrain,
)
from hfscratch.training import checkpoint as ckpt
from hfscratch.training import data as data_module
from hfscratch.training import loop as loop_module
from hfscratch.training import step as step_module

TINY_MODEL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def pack_documents(documents: list[str], tokenizer, block_size: int, pad_every: int = 0) -> Dataset:
    """bos + doc + eos, concatenated and cut into blocks with document-restarting position_ids.

    With `pad_every=k`, every k-th document is followed by padding up to the next block boundary, so blocks
    hold very different numbers of predicted tokens (what token-weighted accumulation must get right).
    """
    ids, pos, blocks_ids, blocks_pos = [], [], [], []
    for i, doc in enumerate(documents):
        tokens = [tokenizer.bos_token_id] + tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids += tokens
        pos += list(range(len(tokens)))
        if pad_every and i % pad_every == 0 and len(ids) % block_size:
            fill = block_size - len(ids) % block_size
            ids += [tokenizer.pad_token_id] * fill
            pos += list(range(pos[-1] + 1, pos[-1] + 1 + fill))
    for start in range(0, len(ids) - block_size + 1, block_size):
        blocks_ids.append(ids[start : start + block_size])
        blocks_pos.append(pos[start : start + block_size])
    return Dataset.from_dict({"input_ids": blocks_ids, "position_ids": blocks_pos})


def shakespeare_splits(text: str, tokenizer, block_size: int = 64, max_docs: int | None = None, pad_every: int = 0):
    docs = [d for d in text.split("\n\n") if d.strip()]
    cut = int(len(docs) * 0.9)  # last 10% held out, as nanoGPT does
    train_docs = docs[:cut] if max_docs is None else docs[:max_docs]
    val_docs = docs[cut:] if max_docs is None else docs[cut : cut + max_docs // 4]
    return pack_documents(train_docs, tokenizer, block_size, pad_every), pack_documents(val_docs, tokenizer, block_size, pad_every)


@pytest.fixture(scope="module")
def shakespeare_data(shakespeare_text, tiny_tokenizer):
    train, val = shakespeare_splits(shakespeare_text, tiny_tokenizer, 64, max_docs=2000)
    return TrainingData(train, val, tiny_tokenizer)


@pytest.fixture(scope="module")
def shakespeare_on_disk(shakespeare_data, tiny_tokenizer, tmp_path_factory):
    """The same data as a DatasetDict folder + tokenizer folder, for recipe/subprocess runs."""
    root = tmp_path_factory.mktemp("packed")
    DatasetDict(train=shakespeare_data.train, validation=shakespeare_data.validation).save_to_disk(root / "ds")
    tiny_tokenizer.save_pretrained(root / "tok")
    return root


def make_args(tmp_path, **training):
    defaults = dict(
        output_dir=str(tmp_path / "run"), max_steps=12, per_device_train_batch_size=8, optimizer="adamw", learning_rate=3e-3, warmup_steps=2, eval_steps=0,
        eval_max_batches=4, logging_steps=4, report_to="none", sample_max_new_tokens=8, spike_zscore=0.0,
    )
    defaults.update(training)
    return ModelConfig(**TINY_MODEL), DataConfig(block_size=64), TrainConfig(**defaults)


def test_loss_falls_on_shakespeare_and_final_folder_loads(tmp_path, shakespeare_data, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_args, data_args, args = make_args(tmp_path, max_steps=60, eval_steps=30, save_steps=30, report_to="tensorboard", sample_prompt="ROMEO:")
    result = pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    first = result.loss_history[0][1]
    assert first > math.log(len(tiny_tokenizer)) - 0.5  # starts near uniform
    assert result.metrics["val_loss"] < first - 1.2, (first, result.metrics)
    assert result.validation_history[-1][1] < result.validation_history[0][1]
    assert 1.0 < result.metrics["val_bits_per_byte"] < 6.0
    final = result.final_dir
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md", "loss_curve.png", "training_metrics.json"):
        assert (final / name).is_file(), name
    card = (final / "README.md").read_text()
    assert "val_loss" in card and f"# {args.run_name}" in card and ".tmp" not in card
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents*")), "tensorboard events missing"
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    ids = tok("ROMEO:", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5
    # The final weights equal the last checkpoint's HF folder (saved at the end).
    last_ckpt = ckpt.list_checkpoints(tmp_path / "run")[-1]
    reloaded = AutoModelForCausalLM.from_pretrained(last_ckpt / "hf")
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["checkpoint-0000030", "checkpoint-0000060"]


def _train_params(tmp_path, data, **training):
    model_args, data_args, args = make_args(tmp_path, **training)
    trainer = loop_module.Pretrainer(PretrainConfig(model_args, data_args, args), data=data)
    trainer.train()
    return {k: v.detach().clone() for k, v in trainer.unwrapped.state_dict().items()}, trainer


def test_accumulation_is_token_weighted(tmp_path, shakespeare_text, tiny_tokenizer):
    """accum 4 x micro 2 == micro 8 (same updates, fp32), with very uneven token counts per micro-batch."""
    train, val = shakespeare_splits(shakespeare_text, tiny_tokenizer, 64, max_docs=400, pad_every=2)
    counts = [int(((torch.tensor(p) != 0) & (torch.tensor(i) != 0)).sum()) for i, p in zip(train["input_ids"][:16], train["position_ids"][:16])]
    assert max(counts) - min(counts) > 20, counts  # the padding really makes blocks uneven
    data = TrainingData(train, val, tiny_tokenizer)
    # adam_epsilon=1 makes the update ~linear in the gradient: with the default 1e-8, Adam's first steps are
    # sign-like and turn fp32 summation-order noise on near-zero gradients into full-size updates.
    common = dict(max_steps=3, warmup_steps=1, lr_schedule="constant", max_grad_norm=0.0, save_steps=0, optimizer="adamw", learning_rate=0.05, adam_epsilon=1.0)
    big, _ = _train_params(tmp_path / "a", data, per_device_train_batch_size=8, gradient_accumulation_steps=1, **common)
    acc, _ = _train_params(tmp_path / "b", data, per_device_train_batch_size=2, gradient_accumulation_steps=4, **common)
    for name in big:
        torch.testing.assert_close(acc[name], big[name], rtol=1e-5, atol=2e-6, msg=name)


def test_token_weighting_matters(shakespeare_text, tiny_tokenizer):
    """The reference: a per-micro-batch mean (the naive scheme) gives a measurably different gradient here."""
    from hfscratch import HfscratchForCausalLM
    from tests.helpers import tiny_config

    train, _ = shakespeare_splits(shakespeare_text, tiny_tokenizer, 64, max_docs=400, pad_every=2)
    blocks = data_module.PackedBlocks(train)
    batch = blocks.get(list(range(8)))
    labels = data_module.make_labels(batch["input_ids"], batch["position_ids"], tiny_tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = HfscratchForCausalLM(tiny_config(tiny_tokenizer))

    def grad(loss_fn):
        model.zero_grad()
        loss_fn().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    def global_mean():
        nll, _ = step_module.compute_token_losses(model, batch["input_ids"], batch["position_ids"], labels)
        return nll / data_module.predicted_token_count(labels)

    def naive():
        parts = []
        for s in range(0, 8, 2):
            nll, _ = step_module.compute_token_losses(model, batch["input_ids"][s : s + 2], batch["position_ids"][s : s + 2], labels[s : s + 2])
            parts.append(nll / data_module.predicted_token_count(labels[s : s + 2]) / 4)
        return sum(parts)

    assert (grad(global_mean) - grad(naive)).abs().max() > 1e-4


def test_nan_step_is_skipped_logged_and_never_saved(tmp_path, shakespeare_data, monkeypatch, capsys):
    real = step_module.compute_token_losses
    calls = {"n": 0}

    def poisoned(model, input_ids, position_ids, labels, z_loss=0.0):
        calls["n"] += 1
        nll, z = real(model, input_ids, position_ids, labels, z_loss)
        if model.training and calls["n"] == 5:  # step 5's forward (micro 8, accum 1): NaN reaches the backward
            nll = nll * float("nan")
        return nll, z

    monkeypatch.setattr(step_module, "compute_token_losses", poisoned)
    model_args, data_args, args = make_args(tmp_path, max_steps=8, save_steps=4)
    result = pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    assert [s for s, _ in result.skipped_steps] == [5]
    assert "non-finite loss" in result.skipped_steps[0][1]
    assert "step 5: skipped the update" in capsys.readouterr().out
    assert result.loss_history[4] == (5, None) and all(v is not None for s, v in result.loss_history if s != 5)
    for path in ckpt.list_checkpoints(tmp_path / "run"):
        from safetensors.torch import load_file

        for name, tensor in load_file(path / "model.safetensors").items():
            assert torch.isfinite(tensor).all(), (path, name)
    assert result.metrics["skipped_steps"] == 1 and math.isfinite(result.metrics["val_loss"])


def test_consecutive_bad_steps_stop_with_clear_error(tmp_path, shakespeare_data, monkeypatch):
    real = step_module.compute_token_losses

    def always_nan(model, *a, **k):
        nll, z = real(model, *a, **k)
        return (nll * float("nan"), z) if model.training else (nll, z)

    monkeypatch.setattr(step_module, "compute_token_losses", always_nan)
    model_args, data_args, args = make_args(tmp_path, max_consecutive_skips=3)
    with pytest.raises(TrainingDivergedError, match="3 consecutive steps skipped"):
        pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)


def test_failed_checkpoint_write_keeps_previous_and_resume_works(tmp_path, shakespeare_data, monkeypatch):
    from transformers import AutoModelForCausalLM

    real = ckpt._write_trainer_state
    calls = {"n": 0}

    def disk_full_on_second(folder, state):
        calls["n"] += 1
        if calls["n"] == 2:
            (folder / "trainer_state.json.part").write_text("{\"step\": ")  # half-written, as a crash leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(folder, state)

    monkeypatch.setattr(ckpt, "_write_trainer_state", disk_full_on_second)
    model_args, data_args, args = make_args(tmp_path, max_steps=8, save_steps=4)
    with pytest.raises(CheckpointError, match="disk full.*checkpoint-0000004 is intact"):
        pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    kept = ckpt.list_checkpoints(tmp_path / "run")
    assert [p.name for p in kept] == ["checkpoint-0000004"]
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*")), "temporary folder left behind"
    AutoModelForCausalLM.from_pretrained(kept[0] / "hf")  # the surviving checkpoint is loadable
    monkeypatch.setattr(ckpt, "_write_trainer_state", real)
    model_args, data_args, args = make_args(tmp_path, max_steps=8, save_steps=4, resume_from_checkpoint="latest")
    result = pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    assert result.metrics["steps"] == 8 and len(result.loss_history) == 8


def test_output_dir_guard_and_overwrite(tmp_path, shakespeare_data):
    model_args, data_args, args = make_args(tmp_path, max_steps=2, warmup_steps=0)
    pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    marker = (tmp_path / "run" / "final" / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(ConfigError, match="already holds a run.*--overwrite_output_dir"):
        pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    assert (tmp_path / "run" / "final" / "model.safetensors").stat().st_mtime_ns == marker  # nothing touched
    args.overwrite_output_dir = True
    pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)


def test_resume_errors(tmp_path, shakespeare_data):
    model_args, data_args, args = make_args(tmp_path, max_steps=2, warmup_steps=0, resume_from_checkpoint="latest")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    args.resume_from_checkpoint = str(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="does not exist"):
        pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    model_args, data_args, args = make_args(tmp_path, max_steps=2, warmup_steps=0, overwrite_output_dir=True)
    pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    path = ckpt.list_checkpoints(tmp_path / "run")[-1]
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    model_args, data_args, args = make_args(tmp_path, max_steps=4, warmup_steps=0, resume_from_checkpoint=str(path))
    with pytest.raises(CheckpointError, match="corrupt"):
        pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)


def test_model_data_mismatches_are_config_errors(tmp_path, shakespeare_data):
    model_args, data_args, args = make_args(tmp_path)
    model_args.model_vocab_size = 100
    with pytest.raises(ConfigError, match="smaller than the tokenizer"):
        pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    model_args, data_args, args = make_args(tmp_path)
    model_args.max_position_embeddings = 32
    with pytest.raises(ConfigError, match="block_size=64 is larger than the model's max_position_embeddings=32"):
        pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    model_args, data_args, args = make_args(tmp_path)
    data_args.block_size = 128  # the blocks on disk hold 64: the setting is never silently ignored
    with pytest.raises(DataError, match="the train blocks hold 64 tokens but block_size is 128; set data.block_size 64"):
        pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    model_args, data_args, args = make_args(tmp_path, global_batch_size=12, per_device_train_batch_size=8)
    with pytest.raises(ConfigError, match="not divisible"):
        pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    bad = TrainingData(shakespeare_data.train.map(lambda r: {"input_ids": [5000] + r["input_ids"][1:]}), shakespeare_data.validation, shakespeare_data.tokenizer)
    with pytest.raises(ConfigError, match="tokenized with another tokenizer"):
        pretrain(PretrainConfig(*make_args(tmp_path)), data=bad)


def test_trainer_state_is_json_with_data_position(tmp_path, shakespeare_data):
    model_args, data_args, args = make_args(tmp_path, max_steps=3, warmup_steps=1, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    state = json.loads((ckpt.list_checkpoints(tmp_path / "run")[-1] / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["sequences_consumed"] == 24 and state["tokens_seen"] == 24 * 64


def test_bf16_with_activation_checkpointing_learns(tmp_path, shakespeare_data):
    """The CPU-available fast paths: bf16 autocast + activation checkpointing still train (loss falls, finite)."""
    model_args, data_args, args = make_args(tmp_path, max_steps=24, mixed_precision="bf16", gradient_checkpointing=True)
    result = pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    losses = [loss for _, loss in result.loss_history]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0] - 0.5, losses
