"""The cleaning stage: a datatrove pipeline from raw sources to cleaned `*.jsonl.gz` shards.

Order of the blocks (each switchable in `CleanConfig`):

1. read (`hfscratch.data.sources.SourceReader`: txt/jsonl/json/parquet/compressed/Hub) -> normalized shards
2. exact dedup (datatrove `ExactDedupSignature` -> `ExactFindDedups` -> `ExactDedupFilter`)
3. MinHash near-dedup (datatrove `MinhashDedupSignature` -> `MinhashDedupBuckets` -> `MinhashDedupCluster` ->
   `MinhashDedupFilter`)
4. quality filters: `GopherRepetitionFilter`, `GopherQualityFilter`, `C4QualityFilter`, `FineWebQualityFilter`
   (thresholds: the filters' own keyword arguments, passed through `*_options` dicts)
5. PII scrubbing: datatrove `PIIFormatter` (emails, public IPs) plus phone numbers (`PIIScrubber` below)
6. benchmark decontamination: datatrove `NGramsDecontFilter` against an index built from local eval files
   (`LocalEvalIndexer` below) -> drop, or only report, documents sharing an N-gram with an eval set
7. write: datatrove `JsonlWriter` -> `output_dir/data/*.jsonl.gz`

Per-stage stats (docs in/out, bytes, why dropped, duplicates found) are printed as a table and saved as
`output_dir/stats.json`; datatrove's own logs and per-task stats stay in `output_dir/logs/<stage>/`.

Executors (`CleanConfig.executor`):

* `local` (default): datatrove `LocalPipelineExecutor`, `tasks` shards processed by `workers` processes.
* `ray`: datatrove `RayPipelineExecutor`; connects to `ray_address` (default: a local Ray started on the spot,
  or the cluster named by $RAY_ADDRESS). `pip install ray` first. Runs synchronously like `local`.
* `slurm`: datatrove `SlurmPipelineExecutor`; every stage becomes an sbatch array job chained with
  `--dependency=afterok`. Set `slurm_partition`, `slurm_time`, `slurm_cpus_per_task`, `slurm_mem_per_cpu_gb`,
  `slurm_venv_path` (and any other `SlurmPipelineExecutor` argument in `slurm_options`). `output_dir` must be on a
  filesystem all nodes share. `clean_corpus` returns right after submitting (`CleanResult.submitted=True`); once
  the jobs are done, `collect_clean_result(output_dir)` gathers files and stats.

Example (YAML recipe fragment)::

    clean:
      executor: slurm            # or local / ray
      tasks: 64
      slurm_partition: cpu
      slurm_time: "04:00:00"
      gopher_quality_options: {min_doc_words: 20}
      decontaminate_with: [data/gsm8k/test.jsonl, data/arc_easy.jsonl]
"""

from __future__ import annotations

import gzip
import inspect
import json
import re
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.formatters.pii import PIIReplacer
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import create_hash_func
from datatrove.utils.stats import PipelineStats
from datatrove.utils.text import ngrams, simplify_text
from datatrove.utils.word_tokenizers import load_word_tokenizer
from tqdm.auto import tqdm

from hfscratch.data.sources import SourceReader, iter_source_texts, resolve_sources
from hfscratch.errors import ConfigError, DataError

EXECUTORS = ("local", "slurm", "ray")
DECONT_MODES = ("drop", "report")
QUALITY_FILTERS = {
    "gopher_repetition": GopherRepetitionFilter,
    "gopher_quality": GopherQualityFilter,
    "c4_quality": C4QualityFilter,
    "fineweb_quality": FineWebQualityFilter,
}
# which threshold to name when a filter empties the corpus
RELAX_HINT = {
    "exact_dedup": "every document is an exact copy of another; set exact_dedup: false to keep copies",
    "minhash_dedup": "raise minhash_buckets/lower minhash_hashes_per_bucket or set minhash_dedup: false",
    "gopher_repetition": "relax gopher_repetition_options (dup_line_frac, dup_para_frac, top_n_grams, dup_n_grams) "
    "or set gopher_repetition: false",
    "gopher_quality": "relax gopher_quality_options (min_doc_words, min_avg_word_length, min_stop_words, ...) "
    "or set gopher_quality: false",
    "c4_quality": "relax c4_quality_options (min_num_sentences, min_words_per_line, filter_no_terminal_punct) "
    "or set c4_quality: false",
    "fineweb_quality": "relax fineweb_quality_options (line_punct_thr, short_line_thr, char_duplicates_ratio, "
    "new_line_ratio) or set fineweb_quality: false",
    "decontamination": "the eval sets overlap every document; set decontamination_mode: report or raise "
    "decontamination_ngram",
}


@dataclass
class CleanConfig:
    """Every switch and threshold of the cleaning pipeline (maps 1:1 to the `clean:` block of a recipe YAML)."""

    # reading
    txt_mode: str = "file"  # file | paragraph | line: how .txt files split into documents
    limit: int | None = None  # max documents read per task (debugging)
    # exact dedup (whole-document text hash)
    exact_dedup: bool = True
    # MinHash near-dedup; default 5-gram shingles, 14 buckets x 8 hashes: ~0.72 Jaccard similarity threshold
    minhash_dedup: bool = True
    minhash_ngrams: int = 5
    minhash_buckets: int = 14
    minhash_hashes_per_bucket: int = 8
    minhash_seed: int = 1
    # quality filters; *_options are the datatrove filter's own keyword arguments (thresholds)
    gopher_repetition: bool = True
    gopher_repetition_options: dict = field(default_factory=dict)
    gopher_quality: bool = True
    gopher_quality_options: dict = field(default_factory=dict)
    c4_quality: bool = True
    c4_quality_options: dict = field(default_factory=dict)
    fineweb_quality: bool = True
    fineweb_quality_options: dict = field(default_factory=dict)
    # PII scrubbing
    pii: bool = True
    pii_emails: bool = True
    pii_ips: bool = True
    pii_only_public_ips: bool = True
    pii_phones: bool = True
    # benchmark decontamination
    decontaminate_with: list[str] = field(default_factory=list)
    decontamination_fields: list[str] | None = None  # jsonl/json fields to index; None = every string field
    decontamination_ngram: int = 13
    decontamination_mode: str = "drop"  # drop | report
    # output
    language: str = "en"
    save_removed: bool = False  # also write dropped documents to output_dir/removed/<stage>/
    keep_work_dir: bool = False  # keep intermediate shards in output_dir/work
    overwrite: bool = False  # replace an existing output_dir
    progress: bool = True
    # execution
    executor: str = "local"  # local | slurm | ray
    tasks: int = 1
    workers: int = 1
    # local worker processes: "fork" on Linux needs no `if __name__ == "__main__":` guard in user scripts;
    # None = fork on Linux, forkserver elsewhere (macOS forbids fork after threads)
    start_method: str | None = None
    # slurm
    slurm_partition: str | None = None
    slurm_time: str = "10:00:00"
    slurm_cpus_per_task: int = 1
    slurm_mem_per_cpu_gb: int = 2
    slurm_venv_path: str | None = None
    slurm_options: dict = field(default_factory=dict)
    # ray
    ray_address: str | None = None
    ray_cpus_per_task: int = 1
    ray_mem_per_cpu_gb: float = 2
    ray_options: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(f"clean executor {self.executor!r} is unknown; use one of {', '.join(EXECUTORS)}")
        if self.decontamination_mode not in DECONT_MODES:
            raise ConfigError(f"decontamination_mode {self.decontamination_mode!r} is unknown; use drop or report")
        if self.decontamination_ngram < 1:
            raise ConfigError("decontamination_ngram must be >= 1; 13 is the usual value")
        if self.tasks < 1 or self.workers < 1:
            raise ConfigError("clean tasks and workers must be >= 1")
        if self.minhash_buckets < 1 or self.minhash_hashes_per_bucket < 1 or self.minhash_ngrams < 1:
            raise ConfigError("minhash_ngrams, minhash_buckets and minhash_hashes_per_bucket must be >= 1")
        if self.executor == "slurm" and not self.slurm_partition:
            raise ConfigError("executor slurm needs slurm_partition; set it to your cluster's CPU partition")
        if self.txt_mode not in ("file", "paragraph", "line"):
            raise ConfigError(f"txt_mode {self.txt_mode!r} is unknown; use file, paragraph or line")
        for name, cls in QUALITY_FILTERS.items():
            options = getattr(self, f"{name}_options") or {}
            allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "exclusion_writer", "language"}
            unknown = sorted(set(options) - allowed)
            if unknown:
                raise ConfigError(
                    f"{name}_options has unknown keys {unknown}; valid thresholds: {', '.join(sorted(allowed))}"
                )


@dataclass
class CleanResult:
    files: list[Path]
    stats: dict
    stats_path: Path
    output_dir: Path
    submitted: bool = False  # True for slurm: jobs queued, files/stats come from collect_clean_result later


# ---------------------------------------------------------------------------------------------------------------
# pipeline blocks datatrove does not have
# ---------------------------------------------------------------------------------------------------------------


def document_text(doc: Document) -> str:
    """Exact-dedup key: the text without leading/trailing whitespace (module level so it pickles)."""
    return doc.text.strip()


METER_PREFIX = "METER: after "


class StageMeter(PipelineStep):
    """Pass-through step counting documents and UTF-8 bytes after a stage, for the per-stage table.

    Datatrove filters count documents and characters, not bytes, and not in the same place for every block
    type (formatters and dedup filters differ), so one uniform meter after each stage keeps the table honest.
    """

    type = "📏 - METER"

    def __init__(self, stage: str):
        self.name = f"after {stage}"  # before super().__init__(), which names the stats after the step
        self.stage = stage
        super().__init__()

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update("documents")
            self.stat_update("bytes", value=len(doc.text.encode("utf-8")), unit="doc")
            yield doc


class ShardReader(JsonlReader):
    """Reads exactly `<rank>.jsonl.gz` from an intermediate folder.

    Datatrove's dedup filters match documents by (rank, index in stream), so each task must re-read the very
    shard it wrote in the previous stage. `JsonlReader`'s own sharding assigns files by position in the listing,
    which shifts when some task wrote no file; this override pins the file to the rank.
    """

    name = "🐿 shard"

    def __init__(self, data_folder, totals: dict | None = None, progress: bool = True):
        super().__init__(data_folder, compression="gzip")
        self.totals = totals or {}
        self.progress = progress

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        filename = f"{rank:05d}.jsonl.gz"
        if not self.data_folder.exists(filename):
            return
        total = self.totals.get(rank)
        with tqdm(total=total, unit="doc", desc=f"task {rank}", disable=not self.progress) as bar:
            for doc in self.read_file(filename):
                bar.update()
                yield doc


PHONE_REGEX = (
    r"(?<![\w+.\-])"  # not glued to a longer token
    r"(?:"
    r"\+\d{1,3}(?:[ .\-]?\(?\d{1,4}\)?){2,6}"  # international: +CC then 2-6 groups (e.g. +33 1 42 68 53 00)
    r"|(?:\(\d{2,4}\)[ .\-]?|\d{2,4}[ .\-])\d{3,4}[ .\-]\d{3,4}"  # national: area code + two groups
    r")"
    r"(?![\w\-]|\.\d)"
)


def looks_like_phone(match: str) -> bool:
    """Accept 7-15 digits; space-only separated numbers need a `+` or `(`: '1200 300 400' is a table, not a phone."""
    digits = sum(c.isdigit() for c in match)
    if not 7 <= digits <= 15:
        return False
    return match.startswith(("+", "(")) or any(sep in match for sep in "-.")


class PIIScrubber(PIIFormatter):
    """datatrove's PIIFormatter (emails, IPs) plus phone numbers, counting what it replaced.

    datatrove 0.10 has no phone-number formatter, so phones use the same `PIIReplacer` machinery with the
    regex above; replacement numbers are from the 555-01xx range reserved for fiction.
    """

    name = "📞 PII (emails, IPs, phones)"

    def __init__(
        self,
        remove_emails: bool = True,
        remove_ips: bool = True,
        only_remove_public_ips: bool = True,
        remove_phones: bool = True,
    ):
        super().__init__(
            remove_emails=remove_emails, remove_ips=remove_ips, only_remove_public_ips=only_remove_public_ips
        )
        self.remove_phones = remove_phones
        self.phone_replacer = PIIReplacer(
            PHONE_REGEX, replacements=("555-0100", "555-0199", "+1 555-0123"), validator=looks_like_phone
        )

    def _scrub(self, text: str, replacer: PIIReplacer, label: str) -> str:
        new_text = replacer.replace(text)
        if new_text != text:
            found = sum(
                1 for m in replacer.regex.finditer(text) if not replacer.validator or replacer.validator(m.group(0))
            )
            self.stat_update(f"{label}_replaced", value=found, unit="doc")
        return new_text

    def format(self, text: str) -> str:
        if self.remove_emails:
            text = self._scrub(text, self.emails_replacer, "emails")
        if self.remove_ips:
            text = self._scrub(text, self.ip_replacer, "ips")
        if self.remove_phones:
            text = self._scrub(text, self.phone_replacer, "phones")
        return text


class LocalEvalIndexer(PipelineStep):
    """Builds the N-gram index `NGramsDecontFilter` reads, from local eval-set documents.

    datatrove's `NGramsDecontIndexer` cannot be used here: it requires `lighteval` and always loads the eval
    tasks through lighteval's registry (a Hub download), even when documents are passed in. This step hashes
    N-grams exactly as that indexer does (same text normalisation, word tokenizer and hash function) and writes
    the same `<task>.index.hashes` files, so datatrove's filter does the matching unchanged.
    Input documents: `text` = one eval item (question, answer, context, choice...), `metadata["task"]`.
    """

    type = "🦠 - DECONT"
    name = "💥 N-grams index (local eval files)"

    def __init__(self, output_folder: str | Path, config: NGramsDecontConfig, language: str = "en"):
        super().__init__()
        self.output_folder = Path(output_folder)
        self.config = config
        self.tokenizer = load_word_tokenizer(language)
        self.hash_func = create_hash_func(config.hash_config)

    def item_hashes(self, text: str) -> list[int]:
        tokens = self.tokenizer.word_tokenize(simplify_text(text, self.config.norm_config))
        return [self.hash_func(" ".join(gram)) for gram in ngrams(tokens, self.config.n_grams)]

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> dict[str, int]:
        hashes: dict[str, set[int]] = {}
        for doc in data or []:
            task = doc.metadata.get("task", "eval")
            self.stat_update("items")
            hashes.setdefault(task, set()).update(self.item_hashes(doc.text))
        self.output_folder.mkdir(parents=True, exist_ok=True)
        counts = {}
        for task, task_hashes in hashes.items():
            array = np.array(sorted(task_hashes), dtype=self.config.hash_config.np_descr)
            array.tofile(self.output_folder / f"{task}.index.hashes")
            counts[task] = len(task_hashes)
            self.stat_update(f"ngrams_{task}", value=len(task_hashes))
        return counts


class EvalOverlapFilter(NGramsDecontFilter):
    """datatrove's N-gram decontamination filter with a report-only mode.

    In `report` mode a contaminated document is kept; it gets `contaminated_ngram`/`contaminated_task` in its
    metadata and is counted (`reported_<task>`), so users can measure overlap before deciding to drop.
    """

    def __init__(self, index_folder, config: NGramsDecontConfig, mode: str = "drop", exclusion_writer=None,
                 language: str = "en"):
        super().__init__(index_folder, config=config, exclusion_writer=exclusion_writer, language=language)
        self.mode = mode

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        result = super().filter(doc)
        if result is True or self.mode == "drop":
            return result
        self.stat_update(f"reported_{doc.metadata['contaminated_task']}")
        return True


# ---------------------------------------------------------------------------------------------------------------
# eval sets for decontamination
# ---------------------------------------------------------------------------------------------------------------


def _record_strings(record, fields: list[str] | None) -> list[str]:
    if not isinstance(record, dict):
        return [record] if isinstance(record, str) else []
    keys = fields if fields is not None else list(record)
    out = []
    for key in keys:
        value = record.get(key)
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            out.extend(v for v in value if isinstance(v, str))
    return out


def _task_name(path: Path) -> str:
    stem = path.name
    for suffix in reversed(path.suffixes):
        stem = stem.removesuffix(suffix)
    return re.sub(r"[^\w.-]+", "_", f"{path.parent.name}_{stem}" if path.parent.name else stem)


def iter_eval_items(eval_files: list[str], fields: list[str] | None = None) -> Iterable[Document]:
    """One Document per eval string: each configured (or every) string field of a jsonl/json record, or each
    blank-line separated block of a plain text file. metadata['task'] = '<folder>_<file stem>'."""
    for kind, path in resolve_sources(eval_files):
        if kind not in ("txt", "jsonl", "json"):
            raise DataError(
                f"eval set {path} is {kind}; give decontamination sets as .jsonl/.json (fields) or plain text files"
            )
        task = _task_name(Path(path))
        produced = 0
        if kind == "txt":
            for text, _ in iter_source_texts("txt", path, txt_mode="paragraph"):
                produced += 1
                yield Document(text=text, id=f"{task}/{produced}", metadata={"task": task})
        else:
            records = _iter_raw_records(path, kind)
            for record in records:
                for text in _record_strings(record, fields):
                    produced += 1
                    yield Document(text=text, id=f"{task}/{produced}", metadata={"task": task})
        if produced == 0:
            wanted = f"fields {fields}" if fields else "string fields"
            raise DataError(f"eval set {path} has no {wanted}; check decontamination_fields")


def _iter_raw_records(path: str, kind: str):
    from hfscratch.data.sources import _open_binary, decode_counting

    with _open_binary(path) as handle:
        content, _ = decode_counting(handle.read())
    if kind == "json" and content.lstrip().startswith("["):
        yield from json.loads(content)
        return
    for line in content.splitlines():
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def build_decontamination_index(
    eval_files: list[str], index_dir: str | Path, ngram: int = 13, fields: list[str] | None = None,
    language: str = "en",
) -> dict[str, int]:
    """Write `<task>.index.hashes` for every eval file; returns {task: number of distinct N-grams}."""
    config = NGramsDecontConfig(n_grams=ngram, find_query_ngrams=True)
    indexer = LocalEvalIndexer(index_dir, config, language=language)
    counts = indexer.run(iter_eval_items(eval_files, fields))
    empty = [task for task, count in counts.items() if count == 0]
    if empty:
        raise DataError(
            f"eval sets {empty} have no {ngram}-gram (items shorter than {ngram} words); lower decontamination_ngram"
        )
    return counts


# ---------------------------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Stage:
    name: str
    pipeline: list
    tasks: int


def _exclusion(config: CleanConfig, root: Path, stage: str):
    if not config.save_removed:
        return None
    return JsonlWriter(str(root / "removed" / stage), output_filename="${rank}.jsonl.gz")


def _make_executor(config: CleanConfig, stage: _Stage, logging_dir: Path, depends=None):
    if config.executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(
            stage.pipeline, tasks=stage.tasks, workers=min(config.workers, stage.tasks),
            logging_dir=str(logging_dir), depends=depends,
            start_method=config.start_method or ("fork" if sys.platform.startswith("linux") else "forkserver"),
        )
    if config.executor == "ray":
        from datatrove.executor import RayPipelineExecutor

        return RayPipelineExecutor(
            stage.pipeline, tasks=stage.tasks, workers=min(config.workers, stage.tasks),
            logging_dir=str(logging_dir), depends=depends, cpus_per_task=config.ray_cpus_per_task,
            mem_per_cpu_gb=config.ray_mem_per_cpu_gb, **config.ray_options,
        )
    from datatrove.executor import SlurmPipelineExecutor

    options = dict(
        tasks=stage.tasks, time=config.slurm_time, partition=config.slurm_partition,
        cpus_per_task=config.slurm_cpus_per_task, mem_per_cpu_gb=config.slurm_mem_per_cpu_gb,
        job_name=f"hfscratch-clean-{stage.name}", logging_dir=str(logging_dir), depends=depends,
        venv_path=config.slurm_venv_path,
    )
    options.update(config.slurm_options)
    return SlurmPipelineExecutor(stage.pipeline, **options)


def _quality_steps(config: CleanConfig, root: Path) -> list:
    steps = []
    for name, cls in QUALITY_FILTERS.items():
        if getattr(config, name):
            options = dict(getattr(config, f"{name}_options") or {})
            options.setdefault("language", config.language)
            steps += [cls(exclusion_writer=_exclusion(config, root, name), **options), StageMeter(name)]
    return steps


def _build_stages(sources, config: CleanConfig, root: Path, text_field: str, shard_tasks: int, totals=None):
    work = root / "work"
    stages: list[_Stage] = []
    ingest = str(work / "ingest")
    exact_cfg = ExactDedupConfig(content_getter=document_text)
    minhash_cfg = MinhashConfig(
        n_grams=config.minhash_ngrams, num_buckets=config.minhash_buckets,
        hashes_per_bucket=config.minhash_hashes_per_bucket, seed=config.minhash_seed,
    )
    reader = SourceReader(
        sources, text_field=text_field, txt_mode=config.txt_mode, limit=config.limit if config.limit else -1,
        file_progress=config.progress,
    )
    first = [reader, StageMeter("read"), JsonlWriter(ingest, output_filename="${rank}.jsonl.gz")]
    if config.exact_dedup:
        first.append(ExactDedupSignature(str(work / "exact_sigs"), config=exact_cfg))
    stages.append(_Stage("read", first, shard_tasks))
    if config.exact_dedup:
        stages.append(_Stage("exact_find", [
            ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"), config=exact_cfg)], 1))
    exact_steps = (
        [ExactDedupFilter(str(work / "exact_dups"), config=exact_cfg,
                          exclusion_writer=_exclusion(config, root, "exact_dedup")), StageMeter("exact_dedup")]
        if config.exact_dedup else []
    )
    final_input = ingest
    final_steps: list = []
    if config.minhash_dedup:
        dedup_folder = str(work / "exact_deduped")
        stages.append(_Stage("minhash_signatures", [
            ShardReader(ingest, totals, config.progress), *exact_steps,
            JsonlWriter(dedup_folder, output_filename="${rank}.jsonl.gz"),
            MinhashDedupSignature(str(work / "minhash_sigs"), config=minhash_cfg, language=config.language),
        ], shard_tasks))
        stages.append(_Stage("minhash_buckets", [
            MinhashDedupBuckets(str(work / "minhash_sigs"), str(work / "minhash_buckets"), config=minhash_cfg)],
            config.minhash_buckets))
        stages.append(_Stage("minhash_cluster", [
            MinhashDedupCluster(str(work / "minhash_buckets"), str(work / "minhash_remove"), config=minhash_cfg)], 1))
        final_input = dedup_folder
        final_steps += [
            MinhashDedupFilter(str(work / "minhash_remove"),
                               exclusion_writer=_exclusion(config, root, "minhash_dedup")),
            StageMeter("minhash_dedup"),
        ]
    else:
        final_steps += exact_steps
    final_steps += _quality_steps(config, root)
    if config.pii:
        final_steps += [
            PIIScrubber(config.pii_emails, config.pii_ips, config.pii_only_public_ips, config.pii_phones),
            StageMeter("pii"),
        ]
    if config.decontaminate_with:
        decont_cfg = NGramsDecontConfig(n_grams=config.decontamination_ngram, find_query_ngrams=True)
        final_steps += [
            EvalOverlapFilter(str(work / "decont_index"), decont_cfg, mode=config.decontamination_mode,
                              exclusion_writer=_exclusion(config, root, "decontamination"), language=config.language),
            StageMeter("decontamination"),
        ]
    final_steps.append(JsonlWriter(str(root / "data"), output_filename="${rank}.jsonl.gz"))
    stages.append(_Stage("filter_and_write", [ShardReader(final_input, totals, config.progress), *final_steps],
                         shard_tasks))
    return stages


def _stage_stats(logging_dir: Path) -> list[dict]:
    """Sum the per-task stats files every datatrove executor writes (stats/<rank>.json)."""
    files = sorted((logging_dir / "stats").glob("*.json"))
    merged = sum((PipelineStats.from_json(json.loads(f.read_text())) for f in files), start=PipelineStats())
    return [s.to_dict() for s in merged.stats]


def _per_rank_documents(logging_dir: Path) -> dict[int, int]:
    counts = {}
    for file in (logging_dir / "stats").glob("*.json"):
        for step in json.loads(file.read_text()):
            if step["name"].endswith(METER_PREFIX + "read"):
                value = step["stats"].get("documents", 0)
                counts[int(file.stem)] = value["total"] if isinstance(value, dict) else int(value)
    return counts


def _total(stats: dict, key: str) -> int:
    value = stats.get(key, 0)
    return int(value["total"]) if isinstance(value, dict) else int(value or 0)


def _block_stages(stages: list[_Stage]) -> dict[str, str]:
    """Map each datatrove block's stats name to the table stage it explains (the meter that follows it)."""
    mapping = {}
    for stage in stages:
        pending = []
        for step in stage.pipeline:
            if isinstance(step, StageMeter):
                for name in pending:  # stats are saved under repr(step): "<type>: <name>"
                    mapping[name] = step.stage
                pending = []
            elif isinstance(step, (ExactFindDedups, MinhashDedupCluster)):
                mapping[repr(step)] = "exact_dedup" if isinstance(step, ExactFindDedups) else "minhash_dedup"
            elif not isinstance(step, (JsonlWriter, ShardReader, ExactDedupSignature, MinhashDedupSignature,
                                       MinhashDedupBuckets)):
                pending.append(repr(step))
    return mapping


def summarize(step_stats: list[dict], block_stages: dict[str, str]) -> dict:
    """Turn datatrove step stats into {stage: {docs_in, docs_out, bytes_in, bytes_out, dropped, details}}."""
    by_name = {s["name"]: s["stats"] for s in step_stats}
    meters = [s for s in step_stats if METER_PREFIX in s["name"]]
    summary: dict[str, dict] = {}
    previous_docs = previous_bytes = None
    for meter in meters:
        stage = meter["name"].split(METER_PREFIX, 1)[1]
        docs_out, bytes_out = _total(meter["stats"], "documents"), _total(meter["stats"], "bytes")
        row = {
            "docs_in": previous_docs if previous_docs is not None else docs_out,
            "docs_out": docs_out,
            "bytes_in": previous_bytes if previous_bytes is not None else bytes_out,
            "bytes_out": bytes_out,
        }
        row["dropped"] = row["docs_in"] - docs_out
        row["details"] = {}
        summary[stage] = row
        previous_docs, previous_bytes = docs_out, bytes_out
    # why: the stats datatrove's own blocks recorded, attached to the stage they belong to
    stage_of_block = block_stages
    skip = {"total", "forwarded", "dropped", "doc_len", "doc_len_tokens", "documents"}
    for name, stats in by_name.items():
        stage = stage_of_block.get(name)
        if stage is None or stage not in summary:
            continue
        for key, value in stats.items():
            if key not in skip:
                summary[stage]["details"][key] = _total(stats, key)
    return summary


def format_table(summary: dict) -> str:
    header = f"{'stage':<18} {'docs in':>9} {'docs out':>9} {'dropped':>8} {'MB in':>9} {'MB out':>9}  details"
    lines = [header, "-" * len(header)]
    for stage, row in summary.items():
        details = ", ".join(f"{k}={v}" for k, v in sorted(row["details"].items()) if v)
        lines.append(
            f"{stage:<18} {row['docs_in']:>9} {row['docs_out']:>9} {row['dropped']:>8} "
            f"{row['bytes_in'] / 1e6:>9.3f} {row['bytes_out'] / 1e6:>9.3f}  {details}"
        )
    return "\n".join(lines)


def _write_input_documents(documents: Iterable[dict], folder: Path, text_field: str, shards: int) -> list[str]:
    """Spread in-memory documents over `shards` jsonl.gz files so the pipeline can read them in parallel."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"input_{i:05d}.jsonl.gz" for i in range(shards)]
    handles = [gzip.open(p, "wt", encoding="utf-8") for p in paths]
    written = 0
    try:
        for index, doc in enumerate(documents):
            if not isinstance(doc, dict) or not isinstance(doc.get(text_field), str):
                raise DataError(
                    f"document {index} has no string {text_field!r} field; pass dicts with the text in text_field"
                )
            record = {"text": doc[text_field], "id": str(doc.get("id", index))}
            handles[index % shards].write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1
    finally:
        for handle in handles:
            handle.close()
    if written == 0:
        raise DataError("clean_corpus got an empty document iterable; pass at least one document")
    return [str(p) for p in paths[: min(shards, written)]]


def _check_not_emptied(summary: dict) -> None:
    for stage, row in summary.items():
        if row["docs_in"] > 0 and row["docs_out"] == 0:
            hint = RELAX_HINT.get(stage, "relax its thresholds")
            raise DataError(
                f"cleaning removed every document at stage '{stage}' ({row['docs_in']} in, 0 out); {hint}"
            )
    if summary and next(iter(summary.values()))["docs_out"] == 0:
        raise DataError("cleaning read 0 documents; check the sources hold text (text_field, txt_mode)")


def collect_clean_result(output_dir: str | Path, print_table: bool = True) -> CleanResult:
    """Gather files and per-stage stats of a finished run (used directly after Slurm jobs complete)."""
    output_dir = Path(output_dir)
    logs = output_dir / "logs"
    if not logs.is_dir():
        raise DataError(f"{output_dir} has no logs/ folder; it is not the output of clean_corpus")
    step_stats = []
    layout = json.loads((output_dir / "stages.json").read_text())
    for stage in layout["stages"]:
        step_stats += _stage_stats(logs / stage)
    summary = summarize(step_stats, layout["blocks"])
    index_info = {}
    if (output_dir / "decontamination_index.json").is_file():
        index_info = json.loads((output_dir / "decontamination_index.json").read_text())
    stats = {"stages": summary, "decontamination_index_ngrams": index_info, "datatrove_steps": step_stats}
    stats_path = output_dir / "stats.json"
    stats_path.write_text(json.dumps(stats, indent=2, ensure_ascii=False))
    if print_table:
        print(format_table(summary), file=sys.stderr)
    files = sorted((output_dir / "data").glob("*.jsonl.gz"))
    return CleanResult(files=files, stats=stats, stats_path=stats_path, output_dir=output_dir)


def clean_corpus(
    sources: list[str] | Iterable[dict],
    output_dir: str | Path,
    config: CleanConfig | None = None,
    text_field: str = "text",
) -> CleanResult:
    """Run the cleaning pipeline on `sources` (paths/globs/Hub ids, or an iterable of dicts) into `output_dir`.

    The run happens in `<output_dir>.partial` and is renamed to `output_dir` only when complete, so a crash
    never leaves a half-written output (re-running resumes from the completed datatrove tasks).
    """
    config = config or CleanConfig()
    config.validate()
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not config.overwrite:
        raise DataError(f"output folder {output_dir} already exists and is not empty; choose another or set overwrite")
    if isinstance(sources, (str, Path)):
        sources = [str(sources)]
    from_paths = isinstance(sources, (list, tuple)) and all(isinstance(s, (str, Path)) for s in sources)
    root = output_dir if config.executor == "slurm" else output_dir.with_name(output_dir.name + ".partial")
    config_record = json.dumps({"sources": [str(s) for s in sources] if from_paths else "<documents>",
                                "config": asdict(config), "text_field": text_field}, sort_keys=True, default=str)
    record_file = root / "clean_config.json"
    if root.exists() and (not from_paths or not record_file.is_file() or record_file.read_text() != config_record):
        shutil.rmtree(root)  # a partial run of another config (or of in-memory documents) cannot be resumed
    root.mkdir(parents=True, exist_ok=True)
    record_file.write_text(config_record)

    started = time.perf_counter()
    if from_paths:
        source_list = [str(s) for s in sources]
        resolved = resolve_sources(source_list)
        has_datasets = any(kind in ("hub", "saved") for kind, _ in resolved)
        n_files = sum(1 for kind, _ in resolved if kind not in ("hub", "saved"))
        shard_tasks = config.tasks if has_datasets else max(1, min(config.tasks, n_files))
    else:
        source_list = _write_input_documents(sources, root / "work" / "input", text_field, config.tasks)
        text_field = "text"
        shard_tasks = len(source_list)

    index_info = {}
    if config.decontaminate_with:
        index_info = build_decontamination_index(
            config.decontaminate_with, root / "work" / "decont_index", config.decontamination_ngram,
            config.decontamination_fields, config.language,
        )
        (root / "decontamination_index.json").write_text(json.dumps(index_info))

    stages = _build_stages(source_list, config, root, text_field, shard_tasks)
    (root / "stages.json").write_text(json.dumps({"stages": [s.name for s in stages], "blocks": _block_stages(stages)}))
    logs = root / "logs"
    if config.executor == "slurm":
        previous = None
        for stage in stages:
            previous = _make_executor(config, stage, logs / stage.name, depends=previous)
        previous.run()  # submits the whole chain (each stage waits for the previous with afterok)
        return CleanResult(files=[], stats={"submitted": [s.name for s in stages]}, stats_path=root / "stats.json",
                           output_dir=root, submitted=True)
    if config.executor == "ray":
        import ray

        if not ray.is_initialized():
            ray.init(address=config.ray_address, ignore_reinit_error=True, log_to_driver=False,
                     include_dashboard=False, **({} if config.ray_address else {"num_cpus": config.workers}))

    bar = tqdm(stages, desc="clean", unit="stage", disable=not config.progress)
    for stage in bar:
        bar.set_postfix_str(stage.name)
        if stage.name != "read":  # per-task document counts give the later stages' progress bars an ETA
            totals = _per_rank_documents(logs / "read")
            for step in stage.pipeline:
                if isinstance(step, ShardReader):
                    step.totals = totals
        _make_executor(config, stage, logs / stage.name).run()
        if stage.name == "read":
            read_summary = summarize(_stage_stats(logs / "read"), {})
            if read_summary.get("read", {}).get("docs_out", 0) == 0:
                raise DataError(
                    f"no documents read from {', '.join(source_list)}; check the sources hold text "
                    f"(text_field={text_field!r}, txt_mode={config.txt_mode!r})"
                )
    elapsed = time.perf_counter() - started

    if not config.keep_work_dir:
        shutil.rmtree(root / "work", ignore_errors=True)
    result = collect_clean_result(root, print_table=False)
    result.stats["seconds"] = round(elapsed, 3)
    result.stats_path.write_text(json.dumps(result.stats, indent=2, ensure_ascii=False))
    if config.progress:
        print(format_table(result.stats["stages"]), file=sys.stderr)
    _check_not_emptied(result.stats["stages"])
    if output_dir.exists():
        shutil.rmtree(output_dir)  # only reachable with overwrite=True (checked above)
    root.rename(output_dir)
    files = sorted((output_dir / "data").glob("*.jsonl.gz"))
    return CleanResult(files=files, stats=result.stats, stats_path=output_dir / "stats.json", output_dir=output_dir)
