"""Cleaning throughput (MB/s) per stage and end to end, on a folder of text files (e.g. the Gutenberg set).

Each stage's datatrove block(s) run alone, in this process, over the SAME documents (fresh copies, so a filter
that drops or edits text does not shrink the next stage's input): the MB/s are comparable across stages.
Then the whole `clean_corpus` pipeline runs with --tasks/--workers and its wall time gives the end-to-end MB/s.

    .venv/bin/python benchmarks/bench_data_clean.py /path/to/gutenberg/books                   # all 42 MB
    .venv/bin/python benchmarks/bench_data_clean.py /path/to/gutenberg/books --max-mb 4 \\
        --eval-set /path/to/gsm8k/test.jsonl --results benchmarks/RESULTS_data_clean.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datatrove.data import Document  # noqa: E402
from datatrove.pipeline.decont import NGramsDecontConfig  # noqa: E402
from datatrove.pipeline.dedup.exact_dedup import (  # noqa: E402
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.dedup.minhash import (  # noqa: E402
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.filters import (  # noqa: E402
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)

from hfscratch.data.clean import (  # noqa: E402
    CleanConfig,
    EvalOverlapFilter,
    PIIScrubber,
    build_decontamination_index,
    clean_corpus,
    document_text,
)
from hfscratch.data.sources import iter_documents  # noqa: E402


def pick_files(folder: Path, max_mb: float | None) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix == ".txt")
    if max_mb is None:
        return files
    chosen, total = [], 0
    for f in files:
        if total >= max_mb * 1e6:
            break
        chosen.append(f)
        total += f.stat().st_size
    return chosen


def fresh(docs: list[dict]) -> list[Document]:
    return [Document(text=d["text"], id=d["id"]) for d in docs]


def drain(step, docs, rank=0, world_size=1) -> int:
    result = step.run(docs, rank, world_size)
    return sum(1 for _ in result) if result is not None else 0


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def stage_timings(docs: list[dict], work: Path, eval_set: str | None) -> list[tuple[str, float, int, int]]:
    rows = []
    n = len(docs)

    exact_cfg = ExactDedupConfig(content_getter=document_text)

    def exact():
        ExactDedupSignature(str(work / "es"), config=exact_cfg).run(iter(fresh(docs)))
        drain(ExactFindDedups(str(work / "es"), str(work / "ed"), config=exact_cfg), None)
        return drain(ExactDedupFilter(str(work / "ed"), config=exact_cfg), iter(fresh(docs)))

    seconds, kept = timed(exact)
    rows.append(("exact_dedup", seconds, n, kept))

    minhash_cfg = MinhashConfig()

    def minhash():
        drain(MinhashDedupSignature(str(work / "ms"), config=minhash_cfg), iter(fresh(docs)))
        buckets = MinhashDedupBuckets(str(work / "ms"), str(work / "mb"), config=minhash_cfg)
        for rank in range(minhash_cfg.num_buckets):
            drain(buckets, None, rank, minhash_cfg.num_buckets)
        drain(MinhashDedupCluster(str(work / "mb"), str(work / "mr"), config=minhash_cfg), None)
        return drain(MinhashDedupFilter(str(work / "mr")), iter(fresh(docs)))

    seconds, kept = timed(minhash)
    rows.append(("minhash_dedup", seconds, n, kept))

    for name, step in [
        ("gopher_repetition", GopherRepetitionFilter()),
        ("gopher_quality", GopherQualityFilter()),
        ("c4_quality", C4QualityFilter()),
        ("fineweb_quality", FineWebQualityFilter()),
        ("pii", PIIScrubber()),
    ]:
        copies = fresh(docs)
        seconds, kept = timed(lambda: drain(step, iter(copies)))  # noqa: B023 - called right away
        rows.append((name, seconds, n, kept))

    if eval_set:
        seconds, _ = timed(lambda: build_decontamination_index([eval_set], work / "di", 13))
        rows.append(("decont_index_build", seconds, 0, 0))
        step = EvalOverlapFilter(str(work / "di"), NGramsDecontConfig(n_grams=13, find_query_ngrams=True))
        seconds, kept = timed(lambda: drain(step, iter(fresh(docs))))
        rows.append(("decontamination", seconds, n, kept))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("books", type=Path, help="folder of .txt files (e.g. shared/data/gutenberg/books)")
    parser.add_argument("--max-mb", type=float, default=None, help="use only the first files up to this many MB")
    parser.add_argument("--txt-mode", default="paragraph", choices=["file", "paragraph", "line"],
                        help="paragraph (default): whole books exceed Gopher's max_doc_words and are all dropped")
    parser.add_argument("--eval-set", default=None, help="eval file for decontamination (e.g. gsm8k/test.jsonl)")
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--results", type=Path, default=None, help="append the table to this markdown file")
    args = parser.parse_args(argv)

    files = pick_files(args.books, args.max_mb)
    raw_bytes = sum(f.stat().st_size for f in files)
    mb = raw_bytes / 1e6
    read_seconds, docs = timed(lambda: list(iter_documents([str(f) for f in files], txt_mode=args.txt_mode)))
    print(f"{len(files)} files, {mb:.2f} MB, {len(docs)} documents (txt_mode={args.txt_mode})", file=sys.stderr)

    rows = [("read", read_seconds, len(docs), len(docs))]
    with tempfile.TemporaryDirectory() as tmp:
        rows += stage_timings(docs, Path(tmp), args.eval_set)
        sum_stages = sum(r[1] for r in rows)
        end_to_end = None
        if not args.skip_end_to_end:
            config = CleanConfig(tasks=args.tasks, workers=args.workers, progress=False,
                                 decontaminate_with=[args.eval_set] if args.eval_set else [])
            end_to_end, result = timed(lambda: clean_corpus([str(f) for f in files], Path(tmp) / "out", config,
                                                            txt_mode=args.txt_mode))
            kept = result.stats["stages"][list(result.stats["stages"])[-1]]["docs_out"]

    lines = [
        "| stage | seconds | MB/s | share of stage time | docs in | docs kept |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, seconds, n_in, n_out in rows:
        rate = f"{mb / seconds:.2f}" if n_in else "-"
        lines.append(f"| {name} | {seconds:.2f} | {rate} | {seconds / sum_stages:.1%} | {n_in} | {n_out} |")
    lines.append(f"| **sum of stages (1 process)** | {sum_stages:.2f} | {mb / sum_stages:.3f} | 100% | | |")
    if end_to_end is not None:
        lines.append(
            f"| **clean_corpus end to end ({args.tasks} tasks, {args.workers} workers)** | {end_to_end:.2f} | "
            f"{mb / end_to_end:.3f} | speed-up vs sum of stages: {sum_stages / end_to_end:.2f}x | {len(docs)} | {kept} |"
        )
    table = "\n".join(lines)
    header = (
        f"Input: {len(files)} files from {args.books.name}/ ({mb:.2f} MB, txt_mode={args.txt_mode}); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, python {platform.python_version()}"
    )
    print(header)
    print(table)
    if args.results:
        with args.results.open("a", encoding="utf-8") as f:
            f.write(f"\n{header}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
