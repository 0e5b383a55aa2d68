"""prepare_data end to end: folders + manifest, AutoTokenizer reload, cache reuse/invalidation, atomicity, errors."""

import json
import re
import shutil
import time

import numpy as np
import pytest
from transformers import AutoTokenizer

from hfscratch.data import CleanConfig, DataConfig, check_block_size, prepare_data, prepare_data_distributed
from hfscratch.errors import ConfigError, DataError
from hfscratch.tokenizer import tokenizer_fingerprint


@pytest.fixture(scope="module")
def shakespeare_copy(tmp_path_factory, shared_data):
    # A private copy, so the source-invalidation test can modify it without touching shared data.
    path = tmp_path_factory.mktemp("src") / "shakespeare.txt"
    shutil.copy(shared_data / "tinyshakespeare" / "input.txt", path)
    return path


def _config(root, source, **overrides):
    values = dict(
        name="mix", output_root=str(root), sources=[str(source)], txt_mode="paragraph", clean=False,
        synthetic_problems=200, vocab_size=512, block_size=64, validation_fraction=0.05, num_proc=1,
    )
    values.update(overrides)
    return DataConfig(**values)


@pytest.fixture(scope="module")
def built(tmp_path_factory, shakespeare_copy):
    root = tmp_path_factory.mktemp("prepared")
    config = _config(root, shakespeare_copy)
    return config, prepare_data(config)


def test_folders_manifest_and_tokenizer(built, shakespeare_copy):
    config, data = built
    root = config.root
    assert data.root == root and not data.reused
    assert (root / "clean" / "synthetic_math.jsonl.gz").is_file() and (root / "clean" / "stats.json").is_file()
    assert (root / "packed" / "train").is_dir() and (root / "packed" / "validation").is_dir()
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(data.manifest, default=str))
    # Sources recorded with size and mtime; the whole config is recorded.
    (source,) = manifest["sources"]
    assert source["bytes"] == shakespeare_copy.stat().st_size and source["mtime_ns"] > 0
    assert manifest["config"]["vocab_size"] == 512
    # The tokenizer folder is a plain transformers tokenizer with a chat template; its hash is in the manifest.
    reloaded = AutoTokenizer.from_pretrained(data.tokenizer_dir)
    assert len(reloaded) == 512 == manifest["tokenizer"]["vocab_size"]
    assert tokenizer_fingerprint(reloaded) == manifest["tokenizer"]["sha256"]
    assert reloaded.chat_template and reloaded.pad_token_id != reloaded.eos_token_id
    assert 1.5 < manifest["tokenizer"]["bytes_per_token"] < 5
    # Token and byte counts agree with the saved splits; the packed text is Shakespeare plus synthetic math.
    for split, ds in (("train", data.train), ("validation", data.validation)):
        assert manifest["splits"][split]["blocks"] == len(ds) > 0
        assert manifest["splits"][split]["tokens"] == len(ds) * 64
        assert 0 < manifest["splits"][split]["target_bytes"] < manifest["splits"][split]["bytes"]
    assert len(data.validation) == int(np.ceil((len(data.train) + len(data.validation)) * 0.05))
    text = reloaded.decode(data.train[0]["input_ids"] + data.train[len(data.train) - 1]["input_ids"])
    assert "<|bos|>" in text and "<|eos|>" in text
    all_text = reloaded.decode([t for row in data.train["input_ids"] for t in row])
    assert "First Citizen" in all_text and "####" in all_text


def test_second_call_reuses_the_cache(built, capsys):
    config, first = built
    start = time.perf_counter()
    again = prepare_data(config)
    elapsed = time.perf_counter() - start
    assert again.reused and "reusing prepared data" in capsys.readouterr().out
    assert elapsed < 5.0
    assert again.train["input_ids"] == first.train["input_ids"]
    assert again.manifest["stage_keys"] == first.manifest["stage_keys"]


def test_changed_vocab_rebuilds_and_keeps_unchanged_corpus(built, capsys, tmp_path):
    config, first = built
    changed = _config(config.output_root, config.sources[0], name="mix_vocab")
    shutil.copytree(config.root, changed.root)  # same corpus, different folder: test only this config change
    prepare_data(changed)
    capsys.readouterr()
    changed.vocab_size = 600
    rebuilt = prepare_data(changed)
    out = capsys.readouterr().out
    assert not rebuilt.reused and "corpus unchanged" in out and "reusing prepared data" not in out
    # the build ends with its speed over the local source bytes, from the stage timings in the manifest
    timings = rebuilt.manifest["timings"]
    mb = rebuilt.manifest["sources"][0]["bytes"] / 1e6
    rate = re.search(r"hfscratch data: ([\d.]+) MB of sources in ([\d.]+) s = ([\d.]+) MB/s \(corpus", out)
    assert rate and float(rate[1]) == round(mb, 2) and float(rate[2]) == round(sum(timings.values()), 1)
    assert float(rate[3]) == pytest.approx(mb / sum(timings.values()), abs=0.006)
    assert len(rebuilt.tokenizer) == 600
    assert rebuilt.manifest["tokenizer"]["sha256"] != first.manifest["tokenizer"]["sha256"]
    # Only block_size changed: the tokenizer is carried over, the blocks are rebuilt.
    changed.block_size = 32
    reblocked = prepare_data(changed)
    out = capsys.readouterr().out
    assert "tokenizer inputs unchanged" in out and len(reblocked.train[0]["input_ids"]) == 32
    assert reblocked.manifest["tokenizer"]["sha256"] == rebuilt.manifest["tokenizer"]["sha256"]
    assert not list(changed.root.parent.glob(".mix_vocab.*"))  # no temp or old folders left behind


def test_changed_source_invalidates(tmp_path, shared_data):
    source = tmp_path / "doc.txt"
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:60_000]
    source.write_text(text, encoding="utf-8")
    config = _config(tmp_path / "out", source, synthetic_problems=0, validation_fraction=0.1)
    first = prepare_data(config)
    assert prepare_data(config).reused
    source.write_text(text + "\n\nA new paragraph appended by the user.", encoding="utf-8")
    second = prepare_data(config)
    assert not second.reused
    assert second.manifest["sources"][0]["bytes"] == first.manifest["sources"][0]["bytes"] + 39
    assert second.manifest["pack"]["tokens"] > first.manifest["pack"]["tokens"]


def test_killed_build_leaves_previous_cache_valid(built, monkeypatch):
    config, first = built
    import hfscratch.data.pack as pack

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C / a kill during packing looks like

    monkeypatch.setattr(pack, "pack_dataset", killed)
    changed = _config(config.output_root, config.sources[0], block_size=32)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(changed)
    monkeypatch.undo()
    assert not list(config.root.parent.glob(".mix.*"))  # the temp build folder was removed
    assert prepare_data(config).reused  # the previous build is intact and still valid


def test_streaming_matches_in_memory(built, tmp_path):
    config, first = built
    streamed = prepare_data(_config(tmp_path, config.sources[0], streaming=True, tokenizer_path=str(first.tokenizer_dir)))
    assert streamed.manifest["tokenizer"]["sha256"] == first.manifest["tokenizer"]["sha256"]
    assert streamed.manifest["pack"] == first.manifest["pack"] | {"text_bytes": streamed.manifest["pack"]["text_bytes"]}
    assert streamed.train["input_ids"] == first.train["input_ids"]


def test_cleaning_runs_on_natural_sources(tmp_path, shared_data):
    lines = (shared_data / "gsm8k" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:60]
    docs = [json.loads(line)["question"] + "\n" + json.loads(line)["answer"] for line in lines]
    planted = docs + docs[:10]  # ten exact duplicates
    source = tmp_path / "docs.jsonl"
    source.write_text("\n".join(json.dumps({"body": d}) for d in planted), encoding="utf-8")
    options = {
        "minhash_dedup": False, "gopher_repetition": False, "gopher_quality": False, "c4_quality": False,
        "fineweb_quality": False, "pii": False, "progress": False,
    }
    config = _config(tmp_path / "out", source, text_field="body", clean=True, cleaning=CleanConfig(**options),
                     synthetic_problems=0, validation_fraction=0.1)
    data = prepare_data(config)
    stages = data.manifest["corpus"]["stats"]["natural"]["stages"]
    assert stages["exact_dedup"]["dropped"] == 10
    assert any(p.suffixes[-2:] == [".jsonl", ".gz"] for p in (config.root / "clean").rglob("*.jsonl.gz"))
    expected_tokens = sum(len(data.tokenizer(d)["input_ids"]) + 2 for d in docs)
    assert data.manifest["pack"]["tokens"] == expected_tokens


def test_distributed_helper_builds_once_then_reuses(built):
    from accelerate import Accelerator

    config, _ = built
    data = prepare_data_distributed(config, Accelerator(cpu=True))
    assert data.reused


def test_bad_inputs(tmp_path, shakespeare_copy):
    with pytest.raises(DataError, match="not found"):
        prepare_data(_config(tmp_path, tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="vocab_size=100 is too small"):
        prepare_data(_config(tmp_path, shakespeare_copy, vocab_size=100))
    with pytest.raises(ConfigError, match="max_position_embeddings=32"):
        check_block_size(_config(tmp_path, shakespeare_copy).block_size, 32)
    with pytest.raises(ConfigError, match="validation_fraction=0"):
        _config(tmp_path, shakespeare_copy, validation_fraction=0.0)
    slurm = CleanConfig(executor="slurm", slurm_partition="cpu")
    with pytest.raises(ConfigError, match="cannot wait for Slurm jobs.*clean: false"):
        prepare_data(_config(tmp_path, shakespeare_copy, clean=True, cleaning=slurm))
    with pytest.raises(DataError, match="corpus is empty"):
        prepare_data(DataConfig(output_root=str(tmp_path), sources=[], synthetic_problems=0))
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no documents"):
        prepare_data(_config(tmp_path, empty, synthetic_problems=0))
    with pytest.raises(DataError, match="less than one block"):
        prepare_data(_config(tmp_path, empty, sources=[], synthetic_problems=2, block_size=4096))
    unsupported = tmp_path / "table.xlsx"
    unsupported.write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match="unsupported"):
        prepare_data(_config(tmp_path, unsupported))
    # A folder the user owns is never overwritten.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not written by hfscratch"):
        prepare_data(_config(tmp_path, shakespeare_copy, name="mine"))
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_cli_one_line_errors_and_success(built, capsys):
    from hfscratch.cli import main

    config, _ = built
    common = ["data", "--output_root", config.output_root, "--name", "mix", "--sources", config.sources[0],
              "--txt_mode", "paragraph", "--clean", "false", "--synthetic_problems", "200", "--block_size", "64",
              "--num_proc", "1"]
    assert main([*common, "--vocab_size", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: vocab_size=100 is too small") and len(err.splitlines()) == 1
    assert main([*common, "--vocab_size", "512"]) == 0
    out = capsys.readouterr().out
    assert "reusing prepared data" in out and "next: hfscratch pretrain" in out


def test_one_line_documents_over_max_doc_bytes_are_counted_and_skipped(tmp_path, shared_data, capfd, caplog):
    """A source document far larger than anything real (one line of repeated book text, in a .txt and as a .jsonl
    record) is skipped when read and counted as oversized; the rest of the corpus is cleaned, tokenized and packed.
    The same code path as a 50 MB line under the default 10 MB cap, with a 200 KB cap and a ~0.5 MB line."""
    from hfscratch.cli import main

    book = (shared_data / "gutenberg" / "books" / "pg11.txt").read_text(encoding="utf-8")
    paragraphs = [p.strip() for p in book.split("\n\n") if p.strip()][100:250]
    one_line = " ".join([" ".join(book.split())] * 3)  # ~0.5 MB of real text without a line break
    assert len(one_line) > 2 * 200_000 and "\n" not in one_line
    src = tmp_path / "src"
    src.mkdir()
    (src / "book.txt").write_text("\n\n".join(paragraphs[:100]) + "\n", encoding="utf-8")
    (src / "huge.txt").write_text(one_line + "\n", encoding="utf-8")
    records = [{"text": p} for p in paragraphs[100:]]
    records.insert(20, {"text": one_line})
    (src / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    common = ["data", "--output_root", str(tmp_path / "out"), "--txt_mode", "paragraph", "--synthetic_problems", "0",
              "--vocab_size", "512", "--block_size", "64", "--num_proc", "1", "--validation_fraction", "0.1",
              "--cleaning.max_doc_bytes", "200000", "--cleaning.c4_quality", "false", "--cleaning.progress", "false"]

    assert main([*common, "--name", "mixed", "--sources", str(src)]) == 0
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.name == "hfscratch.data")
    size = len(one_line.encode("utf-8"))
    for name in ("huge.txt", "records.jsonl"):  # one warning per file, naming the cap and the size
        assert f"{name}: skipped 1 document(s) over max_doc_bytes=200000 (largest {size} bytes)" in warnings
    manifest = json.loads((tmp_path / "out" / "mixed" / "manifest.json").read_text())
    read = manifest["corpus"]["stats"]["natural"]["stages"]["read"]
    assert read["details"]["oversized"] == 2
    assert read["docs_out"] == len(paragraphs)  # every other document was read
    assert read["bytes_out"] == sum(len(p.encode()) for p in paragraphs)
    assert manifest["splits"]["train"]["tokens"] > 0

    # Nothing usable left: one line naming the cap and the fix, no traceback, no prepared or half-built folder.
    (src / "book.txt").unlink()
    (src / "records.jsonl").unlink()
    assert main([*common, "--name", "only_huge", "--sources", str(src)]) == 2
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out
    error = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "all 1 are larger than max_doc_bytes=200000" in error[0]
    assert "raise cleaning.max_doc_bytes" in error[0]
    assert not (tmp_path / "out" / "only_huge").exists() and not list((tmp_path / "out").glob(".only_huge*"))

    with pytest.raises(ConfigError, match="max_doc_bytes=0 must be a positive number"):
        CleanConfig(max_doc_bytes=0).validate()
