"""`CleanConfig` (every switch and threshold of the cleaning pipeline, validated) and `CleanResult`."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

from datatrove.executor import RayPipelineExecutor, SlurmPipelineExecutor
from datatrove.pipeline import filters

from hfscratch.errors import ConfigError
from hfscratch.options import option

from .word_tokenizer import WORD_TOKENIZERS, why_not_fast

EXECUTORS = ("local", "slurm", "ray")
DECONT_MODES = ("drop", "report")
QUALITY_FILTERS = {"gopher_repetition": filters.GopherRepetitionFilter, "gopher_quality": filters.GopherQualityFilter,
                   "c4_quality": filters.C4QualityFilter, "fineweb_quality": filters.FineWebQualityFilter}
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

    # reading options (txt_mode, limit) are clean_corpus arguments: the data config owns them
    # A document over the cap is skipped when read and counted as `oversized` (read row of the table, a warning
    # naming it), not split. The largest Gutenberg book is 3.3 MB; a single document three times that is a dump, a
    # concatenation or a file without its line breaks (one 50 MB line has no paragraph to split at), and cutting it
    # at sentences would make up documents the source never had for dedup and the filters to judge one by one.
    # Gopher's max_doc_words (100,000 words, ~0.6 MB) drops it anyway, but only after the dedup stages paid for it.
    max_doc_bytes: int | None = option(10_000_000, "skip documents larger than this many UTF-8 bytes, counted as "
                                       "oversized (null = no cap; each document is read into memory once)")
    exact_dedup: bool = option(True, "drop exact duplicate documents (whole-text hash)")
    # 5-gram shingles, 14 buckets x 8 hashes: documents above ~0.72 Jaccard similarity are near-duplicates
    minhash_dedup: bool = option(True, "drop near-duplicate documents (MinHash)")
    minhash_ngrams: int = option(5, "MinHash shingle size in words")
    minhash_buckets: int = option(14, "MinHash bands (more: lower similarity threshold)")
    minhash_hashes_per_bucket: int = option(8, "hashes per band (more: higher similarity threshold)")
    minhash_seed: int = option(1, "seed of the MinHash permutations")
    # *_options are the datatrove filter's own keyword arguments (its thresholds)
    gopher_repetition: bool = option(True, "Gopher repetition filter (duplicated lines, paragraphs, n-grams)")
    gopher_repetition_options: dict = option({}, "GopherRepetitionFilter thresholds")
    gopher_quality: bool = option(True, "Gopher quality filter (word counts and lengths, symbols, stop words)")
    gopher_quality_options: dict = option({}, "GopherQualityFilter thresholds")
    c4_quality: bool = option(True, "C4 line filter (terminal punctuation, short lines, boilerplate)")
    c4_quality_options: dict = option({}, "C4QualityFilter thresholds")
    fineweb_quality: bool = option(True, "FineWeb quality filter (line punctuation, short lines, repeated chars)")
    fineweb_quality_options: dict = option({}, "FineWebQualityFilter thresholds")
    pii: bool = option(True, "scrub personal data (the switches below)")
    pii_emails: bool = option(True, "replace email addresses")
    pii_ips: bool = option(True, "replace IP addresses")
    pii_only_public_ips: bool = option(True, "keep private/local IP addresses")
    pii_phones: bool = option(True, "replace phone numbers")
    decontaminate_with: list[str] = option([], "evaluation files whose n-grams documents must not share")
    decontamination_fields: list[str] | None = option(None, "jsonl/json fields to index (default: every string field)")
    decontamination_ngram: int = option(13, "n-gram length of the decontamination match")
    decontamination_mode: str = option("drop", "drop | report contaminated documents")
    language: str = option("en", "language of the text (word tokenizer, stop words)")
    # fast gives spaCy's words (each distinct whitespace-delimited chunk tokenized once); spacy reproduces the
    # reference run of datatrove's own tokenizer on every document
    word_tokenizer: str = option("fast", "fast | spacy: word splitting of MinHash, Gopher, FineWeb, C4, decontamination")
    save_removed: bool = option(False, "also write dropped documents to output_dir/removed/<stage>/")
    keep_work_dir: bool = option(False, "keep intermediate shards in output_dir/work")
    overwrite: bool = option(False, "replace an existing output_dir")
    progress: bool = option(True, "show progress bars")
    executor: str = option("local", "local | slurm | ray (datatrove executor)")
    tasks: int = option(1, "datatrove tasks (shards of the input)")
    workers: int = option(1, "tasks run at once")
    # "fork" on Linux needs no `if __name__ == "__main__":` guard in user scripts; macOS forbids fork after threads
    start_method: str | None = option(None, "local worker processes: fork | forkserver | spawn (default: fork on Linux)")
    slurm_partition: str | None = option(None, "slurm: the partition to submit to")
    slurm_time: str = option("10:00:00", "slurm: time limit per job")
    slurm_cpus_per_task: int = option(1, "slurm: CPUs per task")
    slurm_mem_per_cpu_gb: int = option(2, "slurm: memory per CPU in GB")
    slurm_venv_path: str | None = option(None, "slurm: virtual environment to activate on the nodes")
    slurm_options: dict = option({}, "slurm: more SlurmPipelineExecutor arguments (qos, max_array_size, "
                                 "sbatch_args: {account: ...} for any other #SBATCH line)")
    ray_address: str | None = option(None, "ray: cluster address (default: start a local one)")
    ray_cpus_per_task: int = option(1, "ray: CPUs per task")
    ray_mem_per_cpu_gb: float = option(2, "ray: memory per CPU in GB")
    ray_options: dict = option({}, "ray: more RayPipelineExecutor arguments (gpus_per_task, nodes_per_task, ...)")

    def validate(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(f"clean executor {self.executor!r} is unknown; use one of {', '.join(EXECUTORS)}")
        if self.decontamination_mode not in DECONT_MODES:
            raise ConfigError(f"decontamination_mode {self.decontamination_mode!r} is unknown; use drop or report")
        if self.word_tokenizer not in WORD_TOKENIZERS:
            raise ConfigError(f"word_tokenizer {self.word_tokenizer!r} is unknown; use fast or spacy")
        if self.word_tokenizer == "fast" and (reason := why_not_fast(self.language)):
            raise ConfigError(f"word_tokenizer fast gives spaCy's whitespace-first words; language {self.language!r} "
                              f"{reason}: set word_tokenizer: spacy")
        if self.decontamination_ngram < 1:
            raise ConfigError("decontamination_ngram must be >= 1; 13 is the usual value")
        if self.max_doc_bytes is not None and (isinstance(self.max_doc_bytes, bool) or not isinstance(
                self.max_doc_bytes, int) or self.max_doc_bytes < 1):
            raise ConfigError(f"max_doc_bytes={self.max_doc_bytes!r} must be a positive number of bytes (default "
                              "10000000) or null for no cap")
        if self.tasks < 1 or self.workers < 1:
            raise ConfigError("clean tasks and workers must be >= 1")
        if self.minhash_buckets < 1 or self.minhash_hashes_per_bucket < 1 or self.minhash_ngrams < 1:
            raise ConfigError("minhash_ngrams, minhash_buckets and minhash_hashes_per_bucket must be >= 1")
        if self.executor == "slurm" and not self.slurm_partition:
            raise ConfigError("executor slurm needs slurm_partition; set it to your cluster's CPU partition")
        # checked here, not when the executor is built after the first stages have run (or on a login node)
        for name, cls in [("slurm_options", SlurmPipelineExecutor), ("ray_options", RayPipelineExecutor)]:
            allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "pipeline"}
            unknown = sorted(set(getattr(self, name) or {}) - allowed)
            if unknown:
                raise ConfigError(f"{name} has unknown keys {unknown}: they are {cls.__name__} arguments "
                                  f"({', '.join(sorted(allowed))})")
        for name, cls in QUALITY_FILTERS.items():
            options = getattr(self, f"{name}_options") or {}
            allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "exclusion_writer", "language"}
            unknown = sorted(set(options) - allowed)
            if unknown:
                raise ConfigError(f"{name}_options has unknown keys {unknown}; valid thresholds: {', '.join(sorted(allowed))}")


@dataclass
class CleanResult:
    files: list[Path]
    stats: dict
    stats_path: Path
    output_dir: Path
    submitted: bool = False  # True for slurm: jobs queued, files/stats come from collect_clean_result later
