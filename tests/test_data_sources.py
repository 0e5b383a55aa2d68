"""hfscratch.data.sources: every supported format round-trips real text; bad input gives one-line DataErrors."""

import bz2
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from hfscratch.data.sources import SourceReader, decode_counting, iter_documents, resolve_sources
from hfscratch.errors import DataError


@pytest.fixture(scope="module")
def stories(shared_data):
    """30 real TinyStories paragraphs (distinct, non-blank)."""
    text = (shared_data / "tinystories-slice" / "tinystories_val.txt").read_text(encoding="utf-8")
    paragraphs = []
    for p in text.split("\n\n"):
        if p.strip() and p not in paragraphs:
            paragraphs.append(p.strip())
        if len(paragraphs) == 30:
            break
    return paragraphs


def texts(docs):
    return [d["text"] for d in docs]


def test_txt_modes_round_trip(tmp_path, stories):
    body = "\n\n".join(stories) + "\n"
    path = tmp_path / "stories.txt"
    path.write_text(body, encoding="utf-8")
    assert texts(iter_documents([str(path)])) == [body]
    assert texts(iter_documents([str(path)], txt_mode="paragraph")) == stories
    lines = [line for line in body.splitlines() if line.strip()]
    assert texts(iter_documents([str(path)], txt_mode="line")) == lines
    doc = next(iter_documents([str(path)], txt_mode="paragraph"))
    assert doc["source"] == str(path) and doc["id"] == f"{path}#0"


def test_jsonl_json_parquet_and_compressed_formats(tmp_path, stories):
    records = [{"id": f"s{i}", "body": s, "other": i} for i, s in enumerate(stories)]
    lines = "".join(json.dumps(r) + "\n" for r in records).encode()
    (tmp_path / "a.jsonl").write_bytes(lines)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "c.jsonl.bz2").write_bytes(bz2.compress(lines))
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    (tmp_path / "e.json").write_text(json.dumps(records))
    pq.write_table(pa.table({"body": stories, "n": list(range(len(stories)))}), tmp_path / "f.parquet")
    for name in ["a.jsonl", "b.jsonl.gz", "c.jsonl.bz2", "d.jsonl.zst", "e.json", "f.parquet"]:
        docs = list(iter_documents([str(tmp_path / name)], text_field="body"))
        assert texts(docs) == stories, name
    assert [d["id"] for d in iter_documents([str(tmp_path / "a.jsonl")], text_field="body")][:2] == ["s0", "s1"]
    # compressed plain text, one document per file
    (tmp_path / "g.txt.gz").write_bytes(gzip.compress(stories[0].encode()))
    (tmp_path / "h.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(stories[1].encode()))
    (tmp_path / "i.txt.bz2").write_bytes(bz2.compress(stories[2].encode()))
    got = texts(iter_documents([str(tmp_path / n) for n in ["g.txt.gz", "h.txt.zst", "i.txt.bz2"]]))
    assert got == stories[:3]


def test_folder_glob_and_limit(tmp_path, stories):
    (tmp_path / "sub").mkdir()
    for i, s in enumerate(stories[:4]):
        (tmp_path / "sub" / f"{i}.txt").write_text(s)
    (tmp_path / "sub" / "notes.csv").write_text("ignored")  # unsupported files inside a folder are skipped
    (tmp_path / "sub" / ".hidden.txt").write_text("hidden")
    assert texts(iter_documents([str(tmp_path / "sub")])) == stories[:4]
    assert texts(iter_documents([str(tmp_path / "**" / "*.txt")])) == stories[:4]
    assert len(list(iter_documents([str(tmp_path / "sub")], limit=2))) == 2
    # the same file through a folder and a glob is read once
    assert len(resolve_sources([str(tmp_path / "sub"), str(tmp_path / "sub" / "0.txt")])) == 4


def test_undecodable_bytes_are_counted_and_skipped(tmp_path, stories):
    raw = "\n\n".join(stories[:5]).encode()
    corrupted = raw[:100] + b"\xff\xfe" + raw[100:300] + b"\xc3" + raw[300:]  # 3 bad bytes, one truncated char
    (tmp_path / "bad.txt").write_bytes(corrupted)
    stats = {}
    docs = list(iter_documents([str(tmp_path / "bad.txt")], stats=stats))
    assert stats["undecodable_bytes"] == 3
    assert docs[0]["text"] == raw.decode()
    # jsonl: a bad byte inside one record loses only that byte, never the rest of the file
    lines = [json.dumps({"text": s}, ensure_ascii=False).encode() for s in stories[:5]]
    lines[1] = lines[1][:20] + b"\x80\x81" + lines[1][20:]
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n{broken json\n")
    stats = {}
    docs = list(iter_documents([str(tmp_path / "bad.jsonl")], stats=stats))
    assert texts(docs) == stories[:5]
    assert stats["undecodable_bytes"] == 2 and stats["bad_records"] == 1


def test_truncated_archives_mixed_folders_and_missing_fields_are_counted_not_fatal(tmp_path, stories):
    """A compressed file cut short keeps the documents before the cut and is counted; a folder mixing formats is read
    whole; records without the text field are counted; the pipeline's reader reports the same counts."""
    raw = "\n\n".join(stories[:20]).encode()
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name, compress in (("cut.txt.gz", gzip.compress), ("cut.txt.bz2", bz2.compress),
                           ("cut.txt.zst", zstandard.ZstdCompressor().compress)):
        whole = compress(raw)
        (folder / name).write_bytes(whole[: len(whole) // 2])
    (folder / "whole.txt").write_text(stories[20])
    rows = [{"text": s} if i % 2 else {"body": s} for i, s in enumerate(stories[21:27])]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = {}
    docs = list(iter_documents([str(folder)], txt_mode="paragraph", stats=stats))
    assert stats["truncated_files"] == 3
    by_source = {}
    for doc in docs:
        by_source.setdefault(doc["source"].rsplit("/", 1)[-1], []).append(doc["text"])
    assert 0 < len(by_source["cut.txt.gz"]) < 20  # gzip streams: the paragraphs before the cut survive
    for name in ("cut.txt.gz", "cut.txt.bz2", "cut.txt.zst"):  # bz2/zstd decode whole blocks: maybe nothing
        kept = by_source.get(name, [])
        assert len(kept) < 20 and kept[:-1] == stories[: max(len(kept) - 1, 0)]  # whole paragraphs up to the cut
    assert by_source["whole.txt"] == [stories[20]] and by_source["rows.jsonl"] == stories[22:27:2]
    reader = SourceReader([str(folder)], txt_mode="paragraph")
    assert len(list(reader.run())) == len(docs)
    assert reader.stats["truncated_files"].total == 3 and reader.stats["missing_field"].total == 3
    # nothing usable left: the header alone is one line of error, not a traceback
    (tmp_path / "stub.txt.gz").write_bytes(gzip.compress(raw)[:12])
    with pytest.raises(DataError, match="no documents in .*stub.txt.gz"):
        list(iter_documents([str(tmp_path / "stub.txt.gz")]))


def test_decode_counting_is_exact():
    assert decode_counting("héllo 👋".encode()) == ("héllo 👋", 0)
    assert decode_counting(b"a\xffb\xed\xa0\x80c") == ("abc", 4)  # encoded surrogates are invalid UTF-8 too


def test_bad_input_errors(tmp_path, stories):
    with pytest.raises(DataError, match="not found: .*missing.txt.*pass an existing file"):
        list(iter_documents([str(tmp_path / "missing.txt")]))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        resolve_sources([str(tmp_path / "data.csv")])
    with pytest.raises(DataError, match="no supported files"):
        (tmp_path / "empty_dir").mkdir()
        resolve_sources([str(tmp_path / "empty_dir")])
    with pytest.raises(DataError, match="matches no supported files"):
        resolve_sources([str(tmp_path / "*.txt")])
    (tmp_path / "blank.txt").write_text("  \n\n \n")
    with pytest.raises(DataError, match="no documents in .*blank.txt"):
        list(iter_documents([str(tmp_path / "blank.txt")]))
    (tmp_path / "f.jsonl").write_text(json.dumps({"content": stories[0]}) + "\n")
    with pytest.raises(DataError, match=r"no 'text' field \(fields seen: \['content'\]\); set text_field"):
        list(iter_documents([str(tmp_path / "f.jsonl")]))
    with pytest.raises(DataError, match="no data sources"):
        resolve_sources([])
    with pytest.raises(DataError, match="txt_mode"):
        list(iter_documents([str(tmp_path / "blank.txt")], txt_mode="sentences"))


def test_hub_ids_are_recognised_and_fail_clearly_offline(tmp_path):
    assert resolve_sources(["roneneldan/TinyStories", "HuggingFaceFW/fineweb-edu:sample-10BT@train"]) == [
        ("hub", "roneneldan/TinyStories"),
        ("hub", "HuggingFaceFW/fineweb-edu:sample-10BT@train"),
    ]
    assert resolve_sources(["hf:owner/name"]) == [("hub", "owner/name")]
    # tests run with HF_HUB_OFFLINE=1: the streaming read must fail as a one-line DataError, not a traceback
    with pytest.raises(DataError, match="cannot read Hub dataset someone/nothing-here"):
        list(iter_documents(["someone/nothing-here"]))


def test_source_reader_shards_files_over_tasks(tmp_path, stories):
    for i, s in enumerate(stories[:5]):
        (tmp_path / f"{i}.txt").write_text(s)
    shards = [
        [d.text for d in SourceReader([str(tmp_path)], file_progress=False).run(rank=r, world_size=2)]
        for r in range(2)
    ]
    assert sorted(shards[0] + shards[1]) == sorted(stories[:5])
    # by size, largest file first to the lighter task: no task holds more than half the bytes plus one file
    sizes = [len(s.encode()) for s in stories[:5]]
    assert all(sum(len(t.encode()) for t in shard) <= sum(sizes) / 2 + max(sizes) for shard in shards)
    assert max(stories[:5], key=lambda s: len(s.encode())) in shards[0]
    assert all(d.metadata["source"].startswith(str(tmp_path)) for d in SourceReader([str(tmp_path)]).run())


def test_max_doc_bytes_counts_utf8_bytes(tmp_path, stories):
    from hfscratch.data.sources import utf8_size_over

    assert utf8_size_over("é" * 100, 150) == 200 and utf8_size_over("é" * 100, 200) is None  # bytes, not characters
    assert utf8_size_over("a" * 201, 200) == 201 and utf8_size_over("a" * 50, 200) is None
    source = tmp_path / "docs.jsonl"
    records = [{"text": s} for s in stories[:5]] + [{"text": "ü" * 600}]
    source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    reader = SourceReader([str(source)], max_doc_bytes=1000)  # 600 characters, 1200 bytes
    assert [d.text for d in reader.run()] == stories[:5]
    assert reader.stats["oversized"].total == 1
