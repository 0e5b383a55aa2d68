"""Tokenizer training time and tokenize+pack throughput vs raw `tokenizers` encode_batch on the same text.

    .venv/bin/python benchmarks/bench_tokenize_pack.py ../shared/data/gutenberg/books
    .venv/bin/python benchmarks/bench_tokenize_pack.py ../shared/data/gutenberg/books --num_proc 2 --max_mb 10

Documents are the books split at blank lines (paragraphs), as `txt_mode: paragraph` reads them.
Rows measured, all in this process on the same documents and the same trained tokenizer:

* raw encode_batch   — `tokenizers.Tokenizer.encode_batch(texts)` (Rust, all cores), ids discarded: the ceiling
* pack (map, N proc) — `hfscratch.data.pack.pack_dataset` on a `datasets.Dataset`: `Dataset.map(batched, num_proc=N)`
                        tokenization + eos/bos + packing into blocks with position_ids + Arrow writes to disk
* pack (streaming)   — the bounded-memory path: batches tokenized in-process (Rust threads), packed, written

The ratio column is throughput / raw encode_batch throughput (target >= 0.7 for map with 2 processes).
Results are appended to benchmarks/RESULTS_tokenize_pack.md (use --no_write to skip).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def read_paragraphs(folder: Path, max_mb: float | None) -> list[str]:
    files = sorted(folder.glob("*.txt")) if folder.is_dir() else [folder]
    if not files:
        raise SystemExit(f"no .txt files in {folder}")
    docs, size = [], 0
    for path in files:
        for paragraph in path.read_text(encoding="utf-8").split("\n\n"):
            if paragraph.strip():
                docs.append(paragraph)
                size += len(paragraph.encode("utf-8"))
        if max_mb is not None and size >= max_mb * 2**20:
            break
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="folder of .txt books (e.g. ../shared/data/gutenberg/books) or a file")
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument("--block_size", type=int, default=1024)
    parser.add_argument("--num_proc", type=int, default=2)
    parser.add_argument("--max_mb", type=float, default=None, help="use only the first ~N MB of text")
    parser.add_argument("--repeats", type=int, default=1, help="best of N timings for the throughput rows")
    parser.add_argument("--no_write", action="store_true", help="do not append to benchmarks/RESULTS_tokenize_pack.md")
    args = parser.parse_args()

    from datasets import Dataset, disable_progress_bars

    from hfscratch.data.pack import pack_dataset
    from hfscratch.tokenizer import train_tokenizer

    disable_progress_bars()
    docs = read_paragraphs(args.path, args.max_mb)
    mb = sum(len(d.encode("utf-8")) for d in docs) / 2**20
    print(f"{len(docs):,} documents, {mb:.1f} MB, {os.cpu_count()} CPUs, num_proc={args.num_proc}")

    start = time.perf_counter()
    tokenizer = train_tokenizer(docs, args.vocab_size, show_progress=False)
    train_s = time.perf_counter() - start
    print(f"tokenizer training (vocab {args.vocab_size}): {train_s:.1f} s = {mb / train_s:.2f} MB/s")

    backend = tokenizer.backend_tokenizer

    def best(fn):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
        return min(times), result

    raw_s, tokens = best(lambda: sum(len(e.ids) for e in backend.encode_batch(docs, add_special_tokens=False)))
    # The packer adds bos + eos per document; count them for the raw path too so tokens/s compare like for like.
    tokens_with_special = tokens + 2 * len(docs)
    rows = [("raw tokenizers encode_batch (all cores)", raw_s, tokens_with_special)]

    dataset = Dataset.from_dict({"text": docs})
    with tempfile.TemporaryDirectory() as tmp:
        for num_proc in sorted({1, args.num_proc}):
            seconds, (_, stats) = best(lambda: pack_dataset(
                dataset, tokenizer, args.block_size, Path(tmp) / f"map{num_proc}.arrow", num_proc=num_proc, progress=False))
            rows.append((f"hfscratch pack: datasets.map num_proc={num_proc}", seconds, stats.tokens))
        seconds, (_, stats) = best(lambda: pack_dataset(
            iter(docs), tokenizer, args.block_size, Path(tmp) / "stream.arrow", progress=False))
        rows.append(("hfscratch pack: streaming (bounded memory)", seconds, stats.tokens))

    raw_tps = rows[0][2] / rows[0][1]
    lines = [
        f"### {time.strftime('%Y-%m-%d %H:%M')} — {platform.node()} ({os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the end: the machine was shared, numbers are noisy)",
        "",
        f"Input: `{args.path}` as {len(docs):,} paragraph documents, {mb:.1f} MB. "
        f"Tokenizer: byte-level BPE, vocab {args.vocab_size}; block_size {args.block_size}.",
        "",
        f"Tokenizer training: **{train_s:.1f} s** ({mb / train_s:.2f} MB/s).",
        "",
        "| path | seconds | tokens | tokens/s | ratio vs raw encode_batch |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, seconds, count in rows:
        lines.append(f"| {name} | {seconds:.2f} | {count:,} | {count / seconds:,.0f} | {count / seconds / raw_tps:.2f} |")
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        results = REPO / "benchmarks" / "RESULTS_tokenize_pack.md"
        header = (
            "# Tokenize + pack throughput\n\nRe-run: `.venv/bin/python benchmarks/bench_tokenize_pack.py "
            "../shared/data/gutenberg/books` (appends a section). Target: map with 2 processes >= 0.7 x raw.\n\n"
        )
        previous = results.read_text(encoding="utf-8") if results.exists() else header
        results.write_text(previous.rstrip("\n") + "\n\n" + report + "\n", encoding="utf-8")
        print(f"appended to {results}")


if __name__ == "__main__":
    main()
