"""Tokenize + pack: every token kept in order, position_ids restart per document, errors for bad sizes."""

import numpy as np
import pytest
from datasets import Dataset

from hfscratch.data.config import DataConfig, check_block_size
from hfscratch.data.pack import count_bytes, pack_dataset, split_blocks, token_byte_lengths
from hfscratch.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def docs(shakespeare_text):
    paragraphs = [p for p in shakespeare_text.split("\n\n") if p.strip()]
    # Mix of lengths: long speeches, one-word documents, and a document longer than several blocks.
    return paragraphs[:400] + ["a", "To", "!", "é🙂"] + ["\n\n".join(paragraphs[400:440])]


def _reference(tokenizer, docs, add_bos=True):
    """Expected token stream and per-token 'starts a document' flags, built without the packer."""
    tokens, starts = [], []
    for doc in docs:
        ids = ([tokenizer.bos_token_id] if add_bos else []) + tokenizer(doc, add_special_tokens=False)["input_ids"]
        ids.append(tokenizer.eos_token_id)
        tokens += ids
        starts += [True] + [False] * (len(ids) - 1)
    return tokens, starts


def _reference_positions(starts, block_size, n_tokens):
    positions, current = [], 0
    for i in range(n_tokens):
        current = 0 if (starts[i] or i % block_size == 0) else current + 1
        positions.append(current)
    return positions


def _blocks(ds):
    data = ds.with_format("numpy")
    return np.asarray(data["input_ids"]), np.asarray(data["position_ids"])


def test_packing_preserves_every_token_in_order(tiny_tokenizer, docs, tmp_path):
    block = 64
    packed, stats = pack_dataset(
        Dataset.from_dict({"text": docs}), tiny_tokenizer, block, tmp_path / "blocks.arrow",
        batch_size=7, num_proc=1, progress=False,  # tiny batches: remainders are carried across many batches
    )
    tokens, starts = _reference(tiny_tokenizer, docs)
    ids, positions = _blocks(packed)
    n_full = len(tokens) // block
    assert ids.shape == positions.shape == (n_full, block)
    assert packed.features["input_ids"].feature.dtype == packed.features["position_ids"].feature.dtype == "int32"
    assert packed.features["input_ids"].length == block  # fixed-size lists
    assert ids.reshape(-1).tolist() == tokens[: n_full * block]
    assert positions.reshape(-1).tolist() == _reference_positions(starts, block, n_full * block)
    assert stats.tokens == len(tokens) and stats.documents == len(docs)
    assert stats.dropped_tokens == len(tokens) - n_full * block and stats.padded_tokens == 0
    # A document longer than a block continues into the next block with positions restarting at its start.
    assert (positions[:, 0] == 0).all()
    assert positions.max() == block - 1


def test_streaming_and_multiprocess_paths_match(tiny_tokenizer, docs, tmp_path):
    reference, _ = pack_dataset(Dataset.from_dict({"text": docs}), tiny_tokenizer, 64, tmp_path / "a.arrow", num_proc=1, progress=False)
    multiproc, _ = pack_dataset(Dataset.from_dict({"text": docs}), tiny_tokenizer, 64, tmp_path / "b.arrow", num_proc=2, progress=False)
    streamed, _ = pack_dataset(iter({"text": d} for d in docs), tiny_tokenizer, 64, tmp_path / "c.arrow", batch_size=13, progress=False)
    from_strings, _ = pack_dataset(iter(docs), tiny_tokenizer, 64, tmp_path / "d.arrow", progress=False)
    for other in (multiproc, streamed, from_strings):
        assert other["input_ids"] == reference["input_ids"]
        assert other["position_ids"] == reference["position_ids"]


def test_keep_remainder_pads_with_pad_token_and_bytes_are_exact(tiny_tokenizer, docs, tmp_path):
    block = 64
    packed, stats = pack_dataset(docs, tiny_tokenizer, block, tmp_path / "p.arrow", drop_remainder=False, progress=False)
    tokens, starts = _reference(tiny_tokenizer, docs)
    ids, positions = _blocks(packed)
    flat = ids.reshape(-1)
    pad = len(flat) - len(tokens)
    assert 0 < pad < block and stats.padded_tokens == pad
    assert flat[: len(tokens)].tolist() == tokens
    assert (flat[len(tokens):] == tiny_tokenizer.pad_token_id).all()
    assert positions.reshape(-1)[len(tokens)] == 0  # padding is its own segment
    # Byte accounting for bits-per-byte: all text bytes, none for bos/eos/pad.
    counts = count_bytes(packed, token_byte_lengths(tiny_tokenizer))
    assert counts["bytes"] == sum(len(d.encode("utf-8")) for d in docs) == stats.text_bytes
    assert counts["tokens"] == ids.size


def test_without_bos_and_short_documents(tiny_tokenizer, tmp_path):
    short = ["a", "b c", "!", "x", "yz"] * 40  # every document far shorter than a block
    packed, stats = pack_dataset(short, tiny_tokenizer, 16, tmp_path / "s.arrow", add_bos=False, progress=False)
    tokens, starts = _reference(tiny_tokenizer, short, add_bos=False)
    ids, positions = _blocks(packed)
    assert ids.reshape(-1).tolist() == tokens[: ids.size]
    assert positions.reshape(-1).tolist() == _reference_positions(starts, 16, ids.size)
    assert tiny_tokenizer.bos_token_id not in ids
    assert stats.blocks == len(tokens) // 16


def test_torch_format_gives_fixed_size_int_tensors(tiny_tokenizer, docs, tmp_path):
    packed, _ = pack_dataset(docs[:100], tiny_tokenizer, 32, tmp_path / "t.arrow", progress=False)
    batch = packed.with_format("torch")[:4]
    assert tuple(batch["input_ids"].shape) == (4, 32) and tuple(batch["position_ids"].shape) == (4, 32)


def test_corpus_smaller_than_one_block_and_empty_corpus(tiny_tokenizer, tmp_path):
    with pytest.raises(DataError, match="less than one block"):
        pack_dataset(["just a few words"], tiny_tokenizer, 256, tmp_path / "x.arrow", progress=False)
    with pytest.raises(DataError, match="less than one block"):
        pack_dataset(Dataset.from_dict({"text": ["tiny"]}), tiny_tokenizer, 256, tmp_path / "x.arrow", progress=False)
    with pytest.raises(DataError, match="no documents"):
        pack_dataset(Dataset.from_dict({"text": []}), tiny_tokenizer, 8, tmp_path / "y.arrow", progress=False)
    with pytest.raises(DataError, match="no documents"):
        pack_dataset(["", ""], tiny_tokenizer, 8, tmp_path / "z.arrow", progress=False)
    with pytest.raises(DataError, match="'body'"):
        pack_dataset(Dataset.from_dict({"text": ["a"]}), tiny_tokenizer, 8, tmp_path / "w.arrow", text_field="body", progress=False)
    assert not (tmp_path / "x.arrow").exists()


def test_block_size_checks():
    # pack_dataset trusts its caller: the block_size rules live with the data config.
    with pytest.raises(ConfigError, match="max_position_embeddings=128"):
        check_block_size(256, 128)
    with pytest.raises(ConfigError, match="at least 2"):
        DataConfig(block_size=1)


def test_split_blocks_is_disjoint_complete_and_seeded(tiny_tokenizer, docs, tmp_path):
    packed, _ = pack_dataset(docs, tiny_tokenizer, 64, tmp_path / "s.arrow", progress=False)
    rows = [tuple(r) for r in packed["input_ids"]]
    splits = split_blocks(packed, 0.1, seed=3)
    train = [tuple(r) for r in splits["train"]["input_ids"]]
    validation = [tuple(r) for r in splits["validation"]["input_ids"]]
    assert len(validation) == int(np.ceil(len(rows) * 0.1))
    assert sorted(train + validation) == sorted(rows)
    assert train == [r for r in rows if r not in set(validation)]  # train keeps corpus order
    assert split_blocks(packed, 0.1, seed=3)["validation"]["input_ids"] == splits["validation"]["input_ids"]
    assert split_blocks(packed, 0.1, seed=4)["validation"]["input_ids"] != splits["validation"]["input_ids"]
    with pytest.raises(DataError, match="too few"):
        split_blocks(packed.select([0]), 0.1)
    with pytest.raises(ConfigError):
        split_blocks(packed, 1.0)
