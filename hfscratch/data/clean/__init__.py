"""The cleaning stage: a datatrove pipeline from raw sources to cleaned `*.jsonl.gz` shards.

Order of the blocks (each switchable in `CleanConfig`):

1. read (`hfscratch.data.sources.SourceReader`: txt/jsonl/json/parquet/compressed/Hub) -> normalized shards
2. exact dedup (datatrove `ExactDedupSignature` -> `ExactFindDedups` -> `ExactDedupFilter`)
3. MinHash near-dedup (datatrove `MinhashDedupSignature` -> `MinhashDedupBuckets` -> `MinhashDedupCluster` ->
   `MinhashDedupFilter`)
4. quality filters: `GopherRepetitionFilter`, `GopherQualityFilter`, `C4QualityFilter`, `FineWebQualityFilter`
   (thresholds: the filters' own keyword arguments, passed through `*_options` dicts)
5. PII scrubbing: datatrove `PIIFormatter` (emails, public IPs) plus phone numbers (`steps.PIIScrubber`)
6. benchmark decontamination: datatrove `NGramsDecontFilter` against an index built from local eval files
   (`steps.LocalEvalIndexer`, via `decontamination.build_decontamination_index`) -> drop, or only report,
   documents sharing an N-gram with an eval set
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

Example (YAML recipe fragment): `clean: {executor: slurm, tasks: 64, slurm_partition: cpu, slurm_time: "04:00:00",
gopher_quality_options: {min_doc_words: 20}, decontaminate_with: [data/gsm8k/test.jsonl]}`.

"""

from .config import CleanConfig, CleanResult
from .decontamination import build_decontamination_index
from .pipeline import clean_corpus
from .stats import collect_clean_result
from .steps import EvalOverlapFilter, PIIScrubber, document_text

__all__ = ["CleanConfig", "CleanResult", "EvalOverlapFilter", "PIIScrubber", "build_decontamination_index", "clean_corpus",
           "collect_clean_result", "document_text"]
