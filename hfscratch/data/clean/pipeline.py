"""The pipeline: build the datatrove stages from a `CleanConfig`, make their local/ray/slurm executors, and run
them (`clean_corpus`)."""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor, SlurmPipelineExecutor
from datatrove.pipeline.decont import NGramsDecontConfig
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
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.logging import setup_default_logger
from tqdm.auto import tqdm

from hfscratch.data.sources import DATASET_KINDS, SourceReader, check_txt_mode, resolve_sources
from hfscratch.errors import DataError

from .config import QUALITY_FILTERS, CleanConfig, CleanResult
from .decontamination import build_decontamination_index
from .fast_blocks import FastGopherRepetitionFilter, FastMinhashDedupSignature
from .stats import _check_not_emptied, _per_rank_documents, _stage_stats, collect_clean_result, format_table, summarize
from .steps import (
    SHARD_SUFFIX,
    EvalOverlapFilter,
    PIIScrubber,
    ShardReader,
    StageMeter,
    document_text,
    plain_document_dict,
)
from .word_tokenizer import word_tokenizer_for


@dataclass
class _Stage:
    name: str
    pipeline: list
    tasks: int


def _exclusion(config: CleanConfig, root: Path, stage: str):
    return JsonlWriter(str(root / "removed" / stage), output_filename="${rank}.jsonl.gz") if config.save_removed else None


def _shard_writer(folder: str) -> JsonlWriter:
    """Intermediate shards (read again by `ShardReader`): zstd, not gzip (level 9), whose compression was the largest
    cost of writing them (profiled on the Gutenberg benchmark)."""
    return JsonlWriter(folder, output_filename=f"${{rank}}{SHARD_SUFFIX}", compression="zstd",
                       adapter=plain_document_dict)


# datatrove gives every task a loguru sink on stderr at INFO (its pipeline listing and stats blocks, dozens of lines
# per task and stage) besides the task's log file, with no setting for the console level. The same records stay in
# <output>/logs/<stage>/logs/; on the console `hfscratch data` shows its progress bars and its own table instead.
LOGURU_CHATTER = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| (DEBUG|INFO|SUCCESS)\s*\|")
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


class _WithoutLoguruChatter:
    """A stderr that drops loguru's DEBUG/INFO/SUCCESS records (loguru writes each record in one call) and passes
    everything else: warnings and errors, tracebacks, progress bars."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if LOGURU_CHATTER.match(ANSI_COLOUR.sub("", text)):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _quiet_datatrove_console():
    """While a stage runs, datatrove's sinks write to the filtered stderr: its default sink in this process (which
    logs the all-tasks summary) and the task sinks it adds here or in the workers it forks. The log files under
    logs/ keep every record. Afterwards the default sink writes to the real stderr again."""
    original = sys.stderr
    sys.stderr = _WithoutLoguruChatter(original)
    setup_default_logger()  # re-adds datatrove's default sink on the current sys.stderr
    try:
        yield
    finally:
        sys.stderr = original
        setup_default_logger()


def _make_executor(config: CleanConfig, stage: _Stage, logging_dir: Path, depends=None):
    common = dict(tasks=stage.tasks, workers=min(config.workers, stage.tasks), logging_dir=str(logging_dir),
                  depends=depends)
    if config.executor == "local":
        start_method = config.start_method or ("fork" if sys.platform.startswith("linux") else "forkserver")
        return LocalPipelineExecutor(stage.pipeline, start_method=start_method, **common)
    if config.executor == "ray":
        return RayPipelineExecutor(stage.pipeline, cpus_per_task=config.ray_cpus_per_task,
                                   mem_per_cpu_gb=config.ray_mem_per_cpu_gb, **common, **config.ray_options)
    # workers becomes the array's `%N` limit: at most N tasks of the stage run at once, as with the local executor
    options = dict(time=config.slurm_time, partition=config.slurm_partition, cpus_per_task=config.slurm_cpus_per_task,
                   mem_per_cpu_gb=config.slurm_mem_per_cpu_gb, job_name=f"hfscratch-clean-{stage.name}",
                   venv_path=_venv_activate_script(config.slurm_venv_path), **common)
    return SlurmPipelineExecutor(stage.pipeline, **(options | config.slurm_options))


def _venv_activate_script(venv_path: str | None) -> str | None:
    """datatrove writes `source <venv_path>` into the sbatch script: a venv folder must become its bin/activate."""
    if venv_path is None or Path(venv_path).name == "activate":
        return venv_path
    return str(Path(venv_path) / "bin" / "activate")


def _quality_steps(config: CleanConfig, root: Path, words) -> list:
    steps = []
    for name, cls in QUALITY_FILTERS.items():
        if name == "gopher_repetition" and config.word_tokenizer == "fast":
            cls = FastGopherRepetitionFilter
        if getattr(config, name):
            options = dict(getattr(config, f"{name}_options") or {})
            options["language"] = words
            steps += [cls(exclusion_writer=_exclusion(config, root, name), **options), StageMeter(name)]
    return steps


def _build_stages(sources, config: CleanConfig, root: Path, text_field: str, shard_tasks: int, txt_mode: str = "file",
                  limit: int | None = None) -> list[_Stage]:
    work = root / "work"
    stages: list[_Stage] = []
    # datatrove's `language` argument also takes a WordTokenizer instance; one instance shared by every block
    words = word_tokenizer_for(config.word_tokenizer, config.language)
    ingest = str(work / "ingest")
    exact_cfg = ExactDedupConfig(content_getter=document_text)
    minhash_cfg = MinhashConfig(n_grams=config.minhash_ngrams, num_buckets=config.minhash_buckets,
                                hashes_per_bucket=config.minhash_hashes_per_bucket, seed=config.minhash_seed)
    reader = SourceReader(sources, text_field=text_field, txt_mode=txt_mode, limit=limit or -1,
                          file_progress=config.progress, max_doc_bytes=config.max_doc_bytes)
    first = [reader, StageMeter("read"), _shard_writer(ingest)]
    if config.exact_dedup:
        first.append(ExactDedupSignature(str(work / "exact_sigs"), config=exact_cfg))
    stages.append(_Stage("read", first, shard_tasks))
    if config.exact_dedup:
        stages.append(_Stage("exact_find", [
            ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"), config=exact_cfg)], 1))
    exact_steps = [ExactDedupFilter(str(work / "exact_dups"), config=exact_cfg,
                                    exclusion_writer=_exclusion(config, root, "exact_dedup")),
                   StageMeter("exact_dedup")] if config.exact_dedup else []
    final_input = ingest
    final_steps: list = []
    if config.minhash_dedup:
        dedup_folder = str(work / "exact_deduped")
        stages.append(_Stage("minhash_signatures", [
            ShardReader(ingest, progress=config.progress), *exact_steps,
            _shard_writer(dedup_folder),
            (FastMinhashDedupSignature if config.word_tokenizer == "fast" else MinhashDedupSignature)(
                str(work / "minhash_sigs"), config=minhash_cfg, language=words),
        ], shard_tasks))
        stages.append(_Stage("minhash_buckets", [
            MinhashDedupBuckets(str(work / "minhash_sigs"), str(work / "minhash_buckets"), config=minhash_cfg)],
            config.minhash_buckets))
        stages.append(_Stage("minhash_cluster", [
            MinhashDedupCluster(str(work / "minhash_buckets"), str(work / "minhash_remove"), config=minhash_cfg)], 1))
        final_input = dedup_folder
        final_steps += [MinhashDedupFilter(str(work / "minhash_remove"),
                                           exclusion_writer=_exclusion(config, root, "minhash_dedup")),
                        StageMeter("minhash_dedup")]
    else:
        final_steps += exact_steps
    final_steps += _quality_steps(config, root, words)
    if config.pii:
        final_steps += [PIIScrubber(config.pii_emails, config.pii_ips, config.pii_only_public_ips, config.pii_phones),
                        StageMeter("pii")]
    if config.decontaminate_with:
        decont_cfg = NGramsDecontConfig(n_grams=config.decontamination_ngram, find_query_ngrams=True)
        final_steps += [
            EvalOverlapFilter(str(work / "decont_index"), decont_cfg, mode=config.decontamination_mode,
                              exclusion_writer=_exclusion(config, root, "decontamination"), language=words),
            StageMeter("decontamination"),
        ]
    final_steps.append(JsonlWriter(str(root / "data"), output_filename="${rank}.jsonl.gz", adapter=plain_document_dict))
    stages.append(_Stage("filter_and_write", [ShardReader(final_input, progress=config.progress), *final_steps],
                         shard_tasks))
    return stages


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


def _write_input_documents(documents: Iterable[dict], folder: Path, text_field: str, shards: int) -> list[str]:
    """Spread in-memory documents over `shards` jsonl.gz files so the pipeline can read them in parallel."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"input_{i:05d}.jsonl.gz" for i in range(shards)]
    written = 0
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(gzip.open(p, "wt", encoding="utf-8")) for p in paths]
        for index, doc in enumerate(documents):
            if not isinstance(doc, dict) or not isinstance(doc.get(text_field), str):
                raise DataError(f"document {index} has no string {text_field!r} field; pass dicts with the text in text_field")
            record = {"text": doc[text_field], "id": str(doc.get("id", index))}
            handles[index % shards].write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1
    if written == 0:
        raise DataError("clean_corpus got an empty document iterable; pass at least one document")
    return [str(p) for p in paths[: min(shards, written)]]


def clean_corpus(sources: list[str] | Iterable[dict], output_dir: str | Path, config: CleanConfig | None = None,
                 text_field: str = "text", txt_mode: str = "file", limit: int | None = None) -> CleanResult:
    """Run the cleaning pipeline on `sources` (paths/globs/Hub ids, or an iterable of dicts) into `output_dir`.

    `limit` caps the documents each read task yields. The run happens in `<output_dir>.partial`, renamed when
    complete, so a crash never leaves a half-written output (a rerun resumes from the completed datatrove tasks).
    """
    config = config or CleanConfig()
    config.validate()
    check_txt_mode(txt_mode)
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not config.overwrite:
        raise DataError(f"output folder {output_dir} already exists and is not empty; choose another or set overwrite")
    if isinstance(sources, (str, Path)):
        sources = [str(sources)]
    from_paths = isinstance(sources, (list, tuple)) and all(isinstance(s, (str, Path)) for s in sources)
    root = output_dir if config.executor == "slurm" else output_dir.with_name(output_dir.name + ".partial")
    config_record = json.dumps({"sources": [str(s) for s in sources] if from_paths else "<documents>",
                                "config": asdict(config), "text_field": text_field, "txt_mode": txt_mode,
                                "limit": limit}, sort_keys=True, default=str)
    record_file = root / "clean_config.json"
    if root.exists() and (not from_paths or not record_file.is_file() or record_file.read_text() != config_record):
        shutil.rmtree(root)  # a partial run of another config (or of in-memory documents) cannot be resumed
    root.mkdir(parents=True, exist_ok=True)
    record_file.write_text(config_record)

    started = time.perf_counter()
    if from_paths:
        source_list = [str(s) for s in sources]
        kinds = [kind for kind, _ in resolve_sources(source_list)]
        n_files = sum(kind not in DATASET_KINDS for kind in kinds)
        shard_tasks = config.tasks if n_files < len(kinds) else max(1, min(config.tasks, n_files))
    else:
        source_list = _write_input_documents(sources, root / "work" / "input", text_field, config.tasks)
        text_field = "text"
        shard_tasks = len(source_list)

    index_info = {}
    if config.decontaminate_with:
        index_info = build_decontamination_index(config.decontaminate_with, root / "work" / "decont_index",
                                                 config.decontamination_ngram, config.decontamination_fields,
                                                 word_tokenizer_for(config.word_tokenizer, config.language))
        (root / "decontamination_index.json").write_text(json.dumps(index_info))

    stages = _build_stages(source_list, config, root, text_field, shard_tasks, txt_mode, limit)
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
        with _quiet_datatrove_console():
            _make_executor(config, stage, logs / stage.name).run()
        if stage.name == "read":
            read_summary = summarize(_stage_stats(logs / "read"), _block_stages(stages[:1]))
            if read_summary.get("read", {}).get("docs_out", 0) == 0:
                if oversized := read_summary.get("read", {}).get("details", {}).get("oversized", 0):
                    raise DataError(f"no documents left in {', '.join(source_list)}: all {oversized} are larger than "
                                    f"max_doc_bytes={config.max_doc_bytes}; raise cleaning.max_doc_bytes (null = no "
                                    "cap) or split the text into documents (paragraphs, lines, records)")
                raise DataError(f"no documents read from {', '.join(source_list)}; check the sources hold text "
                                f"(text_field={text_field!r}, txt_mode={txt_mode!r})")
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
