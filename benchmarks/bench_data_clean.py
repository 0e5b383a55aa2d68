"""Cleaning throughput (MB/s) per stage and end to end, on a folder of text files (e.g. the Gutenberg set).

Each stage's datatrove block(s) run alone, in this process, over the SAME documents (fresh copies, so a filter
that drops or edits text does not shrink the next stage's input): the MB/s are comparable across stages.
The blocks are those `clean_corpus` builds for --word-tokenizer (fast: the default; spacy: datatrove's as shipped).
Then the whole `clean_corpus` pipeline runs with --tasks/--workers, once with --word-tokenizer and once with datatrove's
blocks as shipped (spaCy words: word_tokenizer spacy, same stages and executor), and the wall times give the
end-to-end MB/s and their ratio. Last, a plain datatrove pipeline on the same documents: only datatrove's stock blocks,
each with its DEFAULT constructor arguments (JsonlReader, exact dedup, MinHash dedup with MinhashConfig(), Gopher
repetition/quality, C4, FineWeb, PIIFormatter, NGramsDecontFilter with NGramsDecontConfig() when --eval-set is given,
JsonlWriter), run by LocalPipelineExecutor with the same --tasks/--workers and start method; its wall time, MB/s,
documents in and out (the defaults keep and drop differently from hfscratch's) and hfscratch's MB/s over it.
--skip-stages leaves out the per-stage table (end to end only); --skip-plain the plain datatrove run.
--compare-tokenizers replaces the per-stage table by the agreement of fast with spacy: identical word lists per
document, and keep/drop per document for every stage, each disagreement listed with both blocks' reasons.
--executors local,ray replaces everything by one `clean_corpus` job run by each datatrove executor (same files,
config, --tasks/--workers; book-friendly C4/Gopher thresholds so most paragraphs survive): wall time, documents in
and out, and whether the output texts (sorted) and per-stage stats equal the first executor's. Exits 1 if not.

    .venv/bin/python benchmarks/bench_data_clean.py /path/to/gutenberg/books                   # all 42 MB
    .venv/bin/python benchmarks/bench_data_clean.py /path/to/gutenberg/books --max-files 10 \\
        --eval-set /path/to/gsm8k/test.jsonl --compare-tokenizers --results benchmarks/RESULTS_data_clean.md
    .venv/bin/python benchmarks/bench_data_clean.py /path/to/gutenberg/books --max-files 10 \\
        --eval-set /path/to/gsm8k/test.jsonl --skip-stages                 # end to end: hfscratch, spaCy, plain datatrove
    .venv/bin/python benchmarks/bench_data_clean.py /path/to/gutenberg/books --max-files 3 --executors local,ray  # pip install ".[ray]"
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datatrove.data import Document  # noqa: E402
from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter  # noqa: E402
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
from datatrove.pipeline.formatters import PIIFormatter  # noqa: E402
from datatrove.pipeline.readers import JsonlReader  # noqa: E402
from datatrove.pipeline.writers import JsonlWriter  # noqa: E402
from datatrove.utils.text import simplify_text  # noqa: E402
from datatrove.utils.word_tokenizers import load_word_tokenizer  # noqa: E402

from hfscratch.data.clean import (  # noqa: E402
    CleanConfig,
    EvalOverlapFilter,
    PIIScrubber,
    build_decontamination_index,
    clean_corpus,
    document_text,
)
from hfscratch.data.clean.fast_blocks import FastGopherRepetitionFilter, FastMinhashDedupSignature  # noqa: E402
from hfscratch.data.clean.pipeline import _quiet_datatrove_console  # noqa: E402
from hfscratch.data.clean.word_tokenizer import word_tokenizer_for  # noqa: E402
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


def stage_timings(docs: list[dict], work: Path, eval_set: str | None, word_tokenizer: str = "fast"
                  ) -> tuple[list[tuple[str, float, int, int]], dict[str, set[str]], dict[str, object]]:
    """(rows, ids of the documents each stage keeps, the filter block of each stage) for one word_tokenizer mode:
    the blocks `clean_corpus` builds for it, each over all the documents."""
    rows, kept_ids, blocks = [], {}, {}
    n = len(docs)
    work = work / word_tokenizer
    words = word_tokenizer_for(word_tokenizer, "en")
    fast = word_tokenizer == "fast"

    def kept_by(step, rank=0, world_size=1) -> set[str]:
        result = step.run(iter(fresh(docs)), rank, world_size)
        return {doc.id for doc in result}

    exact_cfg = ExactDedupConfig(content_getter=document_text)

    def exact():
        ExactDedupSignature(str(work / "es"), config=exact_cfg).run(iter(fresh(docs)))
        drain(ExactFindDedups(str(work / "es"), str(work / "ed"), config=exact_cfg), None)
        return kept_by(ExactDedupFilter(str(work / "ed"), config=exact_cfg))

    seconds, kept_ids["exact_dedup"] = timed(exact)
    rows.append(("exact_dedup", seconds, n, len(kept_ids["exact_dedup"])))

    minhash_cfg = MinhashConfig()

    def minhash():
        signature = (FastMinhashDedupSignature if fast else MinhashDedupSignature)
        drain(signature(str(work / "ms"), config=minhash_cfg, language=words), iter(fresh(docs)))
        buckets = MinhashDedupBuckets(str(work / "ms"), str(work / "mb"), config=minhash_cfg)
        for rank in range(minhash_cfg.num_buckets):
            drain(buckets, None, rank, minhash_cfg.num_buckets)
        drain(MinhashDedupCluster(str(work / "mb"), str(work / "mr"), config=minhash_cfg), None)
        return kept_by(MinhashDedupFilter(str(work / "mr")))

    seconds, kept_ids["minhash_dedup"] = timed(minhash)
    rows.append(("minhash_dedup", seconds, n, len(kept_ids["minhash_dedup"])))

    blocks.update({
        "gopher_repetition": (FastGopherRepetitionFilter if fast else GopherRepetitionFilter)(language=words),
        "gopher_quality": GopherQualityFilter(language=words),
        "c4_quality": C4QualityFilter(language=words),
        "fineweb_quality": FineWebQualityFilter(language=words),
        "pii": PIIScrubber(),
    })
    for name, step in blocks.items():
        seconds, kept_ids[name] = timed(lambda: kept_by(step))  # noqa: B023 - called right away
        rows.append((name, seconds, n, len(kept_ids[name])))

    if eval_set:
        seconds, _ = timed(lambda: build_decontamination_index([eval_set], work / "di", 13, language=words))
        rows.append(("decont_index_build", seconds, 0, 0))
        step = EvalOverlapFilter(str(work / "di"), NGramsDecontConfig(n_grams=13, find_query_ngrams=True),
                                 language=words)
        blocks["decontamination"] = step
        seconds, kept_ids["decontamination"] = timed(lambda: kept_by(step))
        rows.append(("decontamination", seconds, n, len(kept_ids["decontamination"])))
    return rows, kept_ids, blocks


def verdict(block, doc: dict) -> str:
    """Why `block` keeps or drops one document (the filter's own reason)."""
    result = block.filter(Document(text=doc["text"], id=doc["id"]))
    if result is True:
        return "kept"
    return f"dropped: {result[1]}" if isinstance(result, tuple) else "dropped"


def compare_tokenizers(docs: list[dict], work: Path, eval_set: str | None) -> tuple[str, list[tuple[str, float, float]]]:
    """Markdown: word agreement of the fast tokenizer with datatrove's spaCy one, and keep/drop agreement of every
    stage between `word_tokenizer: fast` and `spacy` on the same documents, each disagreement with both reasons."""
    reference, fast = word_tokenizer_for("spacy", "en"), word_tokenizer_for("fast", "en")
    reference = load_word_tokenizer(reference)
    lines = ["| text | documents | identical word lists | words (spaCy) | spaCy s | fast s |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, texts in [("raw (Gopher, FineWeb)", [d["text"] for d in docs]),
                         ("simplified (MinHash, decontamination)", [simplify_text(d["text"]) for d in docs])]:
        spacy_s, spacy_words = timed(lambda: [reference.word_tokenize(t) for t in texts])  # noqa: B023
        fast_s, fast_words = timed(lambda: [fast.word_tokenize(t) for t in texts])  # noqa: B023
        same = sum(a == b for a, b in zip(spacy_words, fast_words))
        lines.append(f"| {label} | {len(texts)} | {same} ({same / len(texts):.3%}) | {sum(map(len, spacy_words))} | "
                     f"{spacy_s:.2f} | {fast_s:.2f} |")
    runs = {mode: stage_timings(docs, work, eval_set, mode) for mode in ("spacy", "fast")}
    by_id = {d["id"]: d for d in docs}
    lines += ["", "| stage | documents | same decision | agreement | kept (spaCy) | kept (fast) | spaCy s | fast s |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    disagreements = []
    timings = []
    for (name, spacy_s, n_in, _), (_, fast_s, _, _) in zip(runs["spacy"][0], runs["fast"][0]):
        timings.append((name, spacy_s, fast_s))
        if name not in runs["spacy"][1]:
            continue
        spacy_kept, fast_kept = runs["spacy"][1][name], runs["fast"][1][name]
        differ = sorted(spacy_kept ^ fast_kept)
        lines.append(f"| {name} | {n_in} | {n_in - len(differ)} | {(n_in - len(differ)) / n_in:.3%} | {len(spacy_kept)} | "
                     f"{len(fast_kept)} | {spacy_s:.2f} | {fast_s:.2f} |")
        for doc_id in differ:
            if name in runs["spacy"][2]:
                why = (f"spaCy {verdict(runs['spacy'][2][name], by_id[doc_id])}, "
                       f"fast {verdict(runs['fast'][2][name], by_id[doc_id])}")
            else:  # dedup: kept or dropped as a copy of another document
                why = f"spaCy {'kept' if doc_id in spacy_kept else 'dropped'}, fast {'kept' if doc_id in fast_kept else 'dropped'}"
            disagreements.append(f"- {name} / {doc_id}: {why}")
    lines += ["", f"Disagreements ({len(disagreements)}):", *(disagreements or ["- none"])]
    return "\n".join(lines), timings


def end_to_end(files: list[Path], out: Path, args, word_tokenizer: str) -> tuple[float, int, int]:
    """(wall seconds, documents read, documents written) of `clean_corpus` with CleanConfig's defaults."""
    config = CleanConfig(tasks=args.tasks, workers=args.workers, progress=False, word_tokenizer=word_tokenizer,
                         decontaminate_with=[args.eval_set] if args.eval_set else [])
    seconds, result = timed(lambda: clean_corpus([str(f) for f in files], out, config, txt_mode=args.txt_mode))
    stages = result.stats["stages"]
    return seconds, stages["read"]["docs_out"], stages[list(stages)[-1]]["docs_out"]


def count_lines(folder: Path) -> int:
    total = 0
    for path in folder.glob("*.jsonl.gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            total += sum(1 for _ in f)
    return total


PLAIN_STAGES = ["JsonlReader()", "ExactDedupSignature/ExactFindDedups/ExactDedupFilter (ExactDedupConfig("
                "content_getter=the text), its one argument without a default)",
                "MinhashDedupSignature/Buckets/Cluster/Filter (MinhashConfig())", "GopherRepetitionFilter()",
                "GopherQualityFilter()", "C4QualityFilter()", "FineWebQualityFilter()", "PIIFormatter()",
                "NGramsDecontFilter (NGramsDecontConfig(): 12-grams)", "JsonlWriter()"]


def raw_text(doc: Document) -> str:
    """The exact-dedup key of the plain pipeline: the text as is (ExactDedupConfig has no default content_getter)."""
    return doc.text


def plain_datatrove(files: list[Path], work: Path, args) -> tuple[float, int, int, float]:
    """(wall seconds, documents read, documents written, seconds of the txt -> jsonl.gz conversion) of a pipeline of
    datatrove's stock blocks only, each with its default constructor arguments, wired as datatrove's own examples
    do: every stage re-reads the input with the reader (no intermediate shards), and the dedup filters re-run in
    front of the later stages so each sees the documents in the same order as when its signatures were written.

    datatrove has no plain-text reader, so each .txt file becomes one jsonl.gz of the same documents (`txt_mode`)
    first; that conversion is timed apart and not in the wall time. The decontamination index is built by
    hfscratch's `build_decontamination_index` with NGramsDecontConfig()'s n-gram size and datatrove's default
    tokenizer (datatrove's NGramsDecontIndexer needs lighteval and loads the eval tasks from the Hub); it is in the
    wall time, as in `clean_corpus`. The executor is `clean_corpus`'s: LocalPipelineExecutor, --tasks/--workers,
    fork. Its console records are filtered as in `clean_corpus` (the task logs keep them)."""
    inputs = work / "input"
    inputs.mkdir(parents=True)

    def convert():
        for path in files:
            with gzip.open(inputs / f"{path.stem}.jsonl.gz", "wt", encoding="utf-8") as f:
                for doc in iter_documents([str(path)], txt_mode=args.txt_mode):
                    f.write(json.dumps({"text": doc["text"], "id": doc["id"]}, ensure_ascii=False) + "\n")

    convert_seconds, _ = timed(convert)
    folder = {name: str(work / name) for name in ("exact_sigs", "exact_dups", "minhash_sigs", "minhash_buckets",
                                                  "minhash_remove", "decont_index", "output")}
    minhash_buckets = MinhashConfig().num_buckets
    exact = ExactDedupConfig(content_getter=raw_text)

    def reader():
        return JsonlReader(str(inputs))

    def run():
        if args.eval_set:
            build_decontamination_index([args.eval_set], folder["decont_index"], NGramsDecontConfig().n_grams)
        finishing = [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(), FineWebQualityFilter(),
                     PIIFormatter()]
        if args.eval_set:
            finishing.append(NGramsDecontFilter(folder["decont_index"]))
        stages = [
            ([reader(), ExactDedupSignature(folder["exact_sigs"], exact)], args.tasks),
            ([ExactFindDedups(folder["exact_sigs"], folder["exact_dups"], exact)], 1),
            ([reader(), ExactDedupFilter(folder["exact_dups"], exact), MinhashDedupSignature(folder["minhash_sigs"])],
             args.tasks),
            ([MinhashDedupBuckets(folder["minhash_sigs"], folder["minhash_buckets"])], minhash_buckets),
            ([MinhashDedupCluster(folder["minhash_buckets"], folder["minhash_remove"])], 1),
            ([reader(), ExactDedupFilter(folder["exact_dups"], exact), MinhashDedupFilter(folder["minhash_remove"]),
              *finishing, JsonlWriter(folder["output"])], args.tasks),
        ]
        for index, (pipeline, tasks) in enumerate(stages):
            with _quiet_datatrove_console():
                LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(args.workers, tasks), start_method="fork",
                                      logging_dir=str(work / "logs" / str(index))).run()

    seconds, _ = timed(run)
    return seconds, count_lines(inputs), count_lines(work / "output"), convert_seconds


# datatrove's web-text defaults drop almost every hard-wrapped book paragraph (see the 2026-11-21 notes in
# RESULTS_data_clean.md); with these most survive, so the executors are compared on many documents, not a few dozen
BOOK_THRESHOLDS = dict(c4_quality_options={"filter_no_terminal_punct": False, "min_num_sentences": 1},
                       gopher_quality_options={"min_doc_words": 10})


def output_texts(files: list[Path]) -> list[str]:
    texts = []
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f]
    return sorted(texts)


def compare_executors(files: list[Path], work: Path, args, executors: list[str]) -> tuple[str, bool]:
    """Markdown table of the same clean_corpus job run by each executor, and whether all outputs are equal."""
    runs = {}
    for executor in executors:
        config = CleanConfig(executor=executor, tasks=args.tasks, workers=args.workers, progress=False,
                             word_tokenizer=args.word_tokenizer, **BOOK_THRESHOLDS,
                             decontaminate_with=[args.eval_set] if args.eval_set else [])
        print(f"clean_corpus with executor {executor}", file=sys.stderr)
        seconds, result = timed(lambda: clean_corpus([str(f) for f in files], work / executor, config,  # noqa: B023
                                                     txt_mode=args.txt_mode))
        runs[executor] = (seconds, output_texts(result.files), result.stats["stages"])
    reference = executors[0]
    _, reference_texts, reference_stages = runs[reference]
    lines = [f"| executor | wall s | docs in | docs out | texts equal to {reference} | stage stats equal to {reference} |",
             "| --- | ---: | ---: | ---: | --- | --- |"]
    all_equal = True
    for executor, (seconds, texts, stages) in runs.items():
        same_texts, same_stages = texts == reference_texts, stages == reference_stages
        all_equal &= same_texts and same_stages
        docs_in = next(iter(stages.values()))["docs_out"]  # what the read stage produced
        lines.append(f"| {executor} | {seconds:.2f} | {docs_in} | {len(texts)} | {'yes' if same_texts else 'NO'} | "
                     f"{'yes' if same_stages else 'NO'} |")
    lines += ["", f"stages: {', '.join(reference_stages)}; {args.tasks} tasks, {args.workers} workers, "
              f"word_tokenizer {args.word_tokenizer}; the ray time includes starting a local Ray with {args.workers} CPUs"]
    return "\n".join(lines), all_equal


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("books", type=Path, help="folder of .txt files (e.g. shared/data/gutenberg/books)")
    parser.add_argument("--max-mb", type=float, default=None, help="use only the first files up to this many MB")
    parser.add_argument("--max-files", type=int, default=None, help="use only the first N files (sorted by name)")
    parser.add_argument("--txt-mode", default="paragraph", choices=["file", "paragraph", "line"],
                        help="paragraph (default): whole books exceed Gopher's max_doc_words and are all dropped")
    parser.add_argument("--eval-set", default=None, help="eval file for decontamination (e.g. gsm8k/test.jsonl)")
    parser.add_argument("--word-tokenizer", default="fast", choices=["fast", "spacy"],
                        help="CleanConfig.word_tokenizer of the per-stage table and of hfscratch's end-to-end run")
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--skip-stages", action="store_true", help="leave out the per-stage table (end to end only)")
    parser.add_argument("--skip-plain", action="store_true",
                        help="end to end: skip the plain datatrove pipeline (stock blocks, default arguments)")
    parser.add_argument("--skip-datatrove", action="store_true",
                        help="end to end: skip the run with datatrove's blocks as shipped (spaCy words) and the ratio")
    parser.add_argument("--compare-tokenizers", action="store_true",
                        help="instead of the table: word agreement with spaCy, keep/drop agreement per stage "
                        "(fast vs spacy) with every disagreement, and the end-to-end runs")
    parser.add_argument("--executors", default=None,
                        help="comma list, e.g. local,ray: instead of the tables, run the same job with each executor "
                        "and check the outputs are equal")
    parser.add_argument("--results", type=lambda s: Path(s) if s else None, default=None,
                        help="append the table to this markdown file (none or '': print only)")
    args = parser.parse_args(argv)

    files = pick_files(args.books, args.max_mb)[: args.max_files]
    raw_bytes = sum(f.stat().st_size for f in files)
    mb = raw_bytes / 1e6
    read_seconds, docs = timed(lambda: list(iter_documents([str(f) for f in files], txt_mode=args.txt_mode)))
    print(f"{len(files)} files, {mb:.2f} MB, {len(docs)} documents (txt_mode={args.txt_mode})", file=sys.stderr)
    header = (
        f"Input: {len(files)} files from {args.books.name}/ ({mb:.2f} MB, txt_mode={args.txt_mode}); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, python {platform.python_version()}"
    )

    if args.executors:
        with tempfile.TemporaryDirectory() as tmp:
            table, all_equal = compare_executors(files, Path(tmp), args, args.executors.split(","))
        print(header)
        print(table)
        if args.results:
            with args.results.open("a", encoding="utf-8") as f:
                f.write(f"\n{header}\n\n{table}\n")
        return 0 if all_equal else 1

    with tempfile.TemporaryDirectory() as tmp:
        table, rows = "", []
        if args.compare_tokenizers:
            table, _ = compare_tokenizers(docs, Path(tmp), args.eval_set)
        elif not args.skip_stages:
            stage_rows, _, _ = stage_timings(docs, Path(tmp), args.eval_set, args.word_tokenizer)
            rows = [("read", read_seconds, len(docs), len(docs)), *stage_rows]
        runs = {}
        if not args.skip_end_to_end:
            runs["hfscratch"] = end_to_end(files, Path(tmp) / "out", args, args.word_tokenizer)
            if not args.skip_datatrove:
                runs["datatrove"] = end_to_end(files, Path(tmp) / "out_datatrove", args, "spacy")
            if not args.skip_plain:
                seconds, docs_in, docs_out, convert_seconds = plain_datatrove(files, Path(tmp) / "plain", args)
                runs["plain"] = (seconds, docs_in, docs_out)

    lines = []
    if rows:
        sum_stages = sum(r[1] for r in rows)
        lines += [f"word_tokenizer: {args.word_tokenizer}", "",
                  "| stage | seconds | MB/s | share of stage time | docs in | docs kept |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, seconds, n_in, n_out in rows:
            rate = f"{mb / seconds:.2f}" if n_in else "-"
            lines.append(f"| {name} | {seconds:.2f} | {rate} | {seconds / sum_stages:.1%} | {n_in} | {n_out} |")
        lines.append(f"| **sum of stages (1 process)** | {sum_stages:.2f} | {mb / sum_stages:.3f} | 100% | | |")
    elif table:
        lines.append(table)
    if runs:
        lines += ["", f"End to end ({args.tasks} tasks, {args.workers} workers, same input; docs in/out differ where the "
                  "pipelines' defaults keep or drop differently):", "",
                  "| pipeline | seconds | MB/s | docs in | docs out |", "| --- | ---: | ---: | ---: | ---: |"]
        names = {"hfscratch": f"hfscratch clean_corpus (word_tokenizer: {args.word_tokenizer})",
                 "datatrove": "clean_corpus with datatrove's blocks as shipped, spaCy words (word_tokenizer: spacy)",
                 "plain": "plain datatrove: stock blocks, default arguments"}
        for key, (seconds, docs_in, docs_out) in runs.items():
            lines.append(f"| {names[key]} | {seconds:.2f} | {mb / seconds:.3f} | {docs_in} | {docs_out} |")
        if "datatrove" in runs:
            ratio = runs["datatrove"][0] / runs["hfscratch"][0]
            lines.append(f"\nword_tokenizer {args.word_tokenizer} vs datatrove's blocks as shipped: {ratio:.2f}x the throughput")
        if "plain" in runs:
            ratio = runs["plain"][0] / runs["hfscratch"][0]
            decont = f"against {Path(args.eval_set).name}" if args.eval_set else "off (no --eval-set)"
            lines += [f"\nhfscratch / plain datatrove: {ratio:.2f}x the throughput (MB/s over MB/s)", "",
                      f"- plain datatrove: {', '.join(PLAIN_STAGES)}; decontamination {decont}; LocalPipelineExecutor, "
                      f"{args.tasks} tasks, {args.workers} workers, fork (as clean_corpus).",
                      f"- Its input: the same documents as jsonl.gz (datatrove has no plain-text reader); converting "
                      f"took {convert_seconds:.2f} s more, not in its seconds. Files go to tasks by position "
                      "(JsonlReader), hfscratch's by size.",
                      "- hfscratch: CleanConfig defaults (datatrove's default thresholds, the same MinHash settings; "
                      "exact dedup of the stripped text, PII also phone numbers, decontamination 13-grams incl. the "
                      "questions' own)."]
    table = "\n".join(lines)
    print(header)
    print(table)
    if args.results:
        with args.results.open("a", encoding="utf-8") as f:
            f.write(f"\n{header}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
