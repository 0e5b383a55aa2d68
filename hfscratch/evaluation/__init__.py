"""Evaluation: lm-eval tasks (offline copies in eval/tasks, or lm-eval's own), bits-per-byte, plots, model card.

    from hfscratch.evaluation import evaluate_model
    results = evaluate_model("out/model", tasks=["gsm8k_local", "hellaswag_local"], data_dir="../shared/data", limit=50)
"""

from pathlib import Path

from .intrinsic import TextScores, bits_per_byte, perplexity, score_texts, sliding_windows
from .reports import (
    add_eval_to_model_card,
    flatten_results,
    plot_scores_over_training,
    record_training_eval,
    write_eval_results,
)
from .runner import evaluate_model, run_training_eval
from .tasks import LOCAL_EQUIVALENTS, default_tasks_dir, list_tasks

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
PERPLEXITY_METRIC = METRICS_DIR / "perplexity"
BITS_PER_BYTE_METRIC = METRICS_DIR / "bits_per_byte"

__all__ = [
    "BITS_PER_BYTE_METRIC", "LOCAL_EQUIVALENTS", "PERPLEXITY_METRIC", "TextScores", "bits_per_byte", "default_tasks_dir",
    "evaluate_model", "flatten_results", "list_tasks", "perplexity", "plot_scores_over_training", "record_training_eval",
    "run_training_eval", "score_texts", "sliding_windows", "add_eval_to_model_card", "write_eval_results",
]
