"""The cleaning stage: a datatrove pipeline from raw sources to cleaned `*.jsonl.gz` shards.

Blocks, in order (each switchable in `CleanConfig`): read (`sources.SourceReader`) → exact dedup → MinHash
near-dedup → quality filters (Gopher repetition and quality, C4, FineWeb; thresholds are the filters' own keyword
arguments, in `*_options` dicts) → PII scrubbing (datatrove `PIIFormatter` + `steps.PIIScrubber` for phones) →
benchmark decontamination (`NGramsDecontFilter` against an index of local eval files; drop or only report) →
`JsonlWriter` to `output_dir/data/*.jsonl.gz`. Per-stage stats (docs and bytes in/out, why dropped) are printed
as a table and saved as `output_dir/stats.json`; datatrove's logs stay in `output_dir/logs/<stage>/`.

Executors (`CleanConfig.executor`): `local` (`LocalPipelineExecutor`), `ray` (`RayPipelineExecutor`, at
`ray_address` or a local Ray; synchronous like local) and `slurm` (`SlurmPipelineExecutor`: each stage an sbatch
array job chained with `--dependency=afterok`; `output_dir` must be on a shared filesystem). With slurm,
`clean_corpus` returns right after submitting (`CleanResult.submitted=True`); `collect_clean_result(output_dir)`
gathers files and stats once the jobs are done.
"""

from .config import CleanConfig, CleanResult
from .decontamination import build_decontamination_index
from .pipeline import clean_corpus
from .stats import collect_clean_result
from .steps import EvalOverlapFilter, PIIScrubber, document_text

__all__ = ["CleanConfig", "CleanResult", "EvalOverlapFilter", "PIIScrubber", "build_decontamination_index", "clean_corpus",
           "collect_clean_result", "document_text"]
