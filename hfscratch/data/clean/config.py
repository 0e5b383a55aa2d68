"""`CleanConfig` (every switch and threshold of the cleaning pipeline, validated) and `CleanResult`."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)

from hfscratch.errors import ConfigError

EXECUTORS = ("local", "slurm", "ray")
DECONT_MODES = ("drop", "report")
QUALITY_FILTERS = {"gopher_repetition": GopherRepetitionFilter, "gopher_quality": GopherQualityFilter,
                   "c4_quality": C4QualityFilter, "fineweb_quality": FineWebQualityFilter}
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
