"""What an evaluation leaves for people to read: results.json/.md, per-task bar charts, the model card's
model-index, and score-over-training plots across the checkpoints of one run."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from lm_eval.utils import handle_non_serializable, make_table

from ..atomic import save_figure_atomically, write_file_atomically
from ..errors import HfscratchError
from ..model_card import update_model_index

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
HISTORY_FILE = "eval_history.jsonl"


def _task_metrics(metrics: dict, include_stderr: bool = False):
    """(metric, filter, value) for each numeric "metric,filter" entry of one task's lm-eval results."""
    for key, value in metrics.items():
        if "," in key and isinstance(value, (int, float)) and not isinstance(value, bool):
            metric, filter_name = key.split(",", 1)
            if include_stderr or not metric.endswith("_stderr"):
                yield metric, filter_name, float(value)


def _intrinsic(results: dict) -> dict:
    return (results.get("hfscratch") or {}).get("intrinsic") or {}


def flatten_results(results: dict, include_stderr: bool = False) -> dict[str, float]:
    """lm-eval's {"results": {task: {"acc,none": x}}} -> {"task/acc": x, "gsm8k/exact_match_strict-match": y}."""
    flat: dict[str, float] = {}
    for task, metrics in results.get("results", {}).items():
        for metric, filter_name, value in _task_metrics(metrics, include_stderr):
            flat[f"{task}/{metric}" + ("" if filter_name == "none" else f"_{filter_name}")] = value
    for name, value in _intrinsic(results).items():
        for metric in ("bits_per_byte", "perplexity"):
            flat[f"{name}/{metric}"] = float(value[metric])
    return flat


def training_progress(model_dir: str | os.PathLike) -> dict[str, int]:
    """Step and tokens seen of a checkpoint, from its (or, for pretraining's `checkpoint-N/hf/`, its parent's)
    trainer state or folder name."""
    folder = Path(model_dir)
    for candidate in (folder, folder.parent):
        found: dict[str, int] = {}
        for name in ("trainer_state.json", "training_state.json"):
            try:
                state = json.loads((candidate / name).read_text())
            except (OSError, json.JSONDecodeError):  # missing or unreadable
                continue
            for key in ("tokens_seen", "num_input_tokens_seen", "training_tokens"):
                if isinstance(state.get(key), int) and state[key] > 0:
                    found.setdefault("tokens", state[key])
            for key in ("step", "global_step"):
                if isinstance(state.get(key), int):
                    found.setdefault("step", state[key])
        match = re.search(r"(?:checkpoint|step)[-_](\d+)$", candidate.name)
        if match and "step" not in found:
            found["step"] = int(match.group(1))
        if found:
            return found
    return {}


def results_markdown(results: dict) -> str:
    parts = [make_table(results, column) for column in ("results", "groups") if results.get(column)]
    if _intrinsic(results):
        lines = ["|text|bits/byte|perplexity|tokens|bytes|max_length|stride|", "|---|--:|--:|--:|--:|--:|--:|"]
        for name, value in _intrinsic(results).items():
            lines.append(f"|{name}|{value['bits_per_byte']:.4f}|{value['perplexity']:.3f}|{value['tokens']}|{value['bytes']}|{value['max_length']}|{value['stride']}|")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; the backend must be chosen before pyplot loads
    import matplotlib.pyplot as plt

    return plt


def plot_task_bars(results: dict, output_dir: Path) -> list[Path]:
    """One PNG bar chart per task: each metric (per filter) with its stderr as an error bar."""
    plt = _pyplot()
    written = []
    for task, metrics in results.get("results", {}).items():
        labels, values, errors = [], [], []
        for metric, filter_name, value in _task_metrics(metrics):
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            labels.append(metric if filter_name == "none" else f"{metric}\n({filter_name})")
            values.append(value)
            errors.append(float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else 0.0)
        if not labels:
            continue
        fig, ax = plt.subplots(figsize=(1.8 + 1.4 * len(labels), 3.6))
        bars = ax.bar(range(len(labels)), values, yerr=errors, capsize=4, color="#4C72B0")
        ax.set_xticks(range(len(labels)), labels)
        for bar, value in zip(bars, values):
            ax.annotate(f"{value:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
        n_samples = results.get("n-samples", {}).get(task, {}).get("effective")
        ax.set_title(f"{task}" + (f" (n={n_samples})" if n_samples else ""))
        if all(0.0 <= v <= 1.0 for v in values):
            ax.set_ylim(0, 1.05)
        fig.tight_layout()
        path = output_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', task)}.png"
        save_figure_atomically(fig, path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_eval_results(results: dict, output_dir: str | os.PathLike) -> list[Path]:
    out = Path(output_dir)  # each writer creates the folder
    body = {k: v for k, v in results.items() if k != "samples"}
    written = [out / RESULTS_JSON, out / RESULTS_MD]
    write_file_atomically(written[0], json.dumps(body, indent=2, default=handle_non_serializable, ensure_ascii=False))
    write_file_atomically(written[1], results_markdown(results))
    for task, rows in (results.get("samples") or {}).items():
        path = out / f"samples_{task}.jsonl"
        write_file_atomically(path, "".join(json.dumps(r, default=handle_non_serializable, ensure_ascii=False) + "\n" for r in rows))
        written.append(path)
    written += plot_task_bars(results, out)
    return written


def model_index_entries(results: dict) -> list[dict[str, Any]]:
    """lm-eval results -> entries for the model card's `model-index` (one per task metric, no stderr)."""
    entries = []
    configs = results.get("configs", {})
    for task, metrics in results.get("results", {}).items():
        config = configs.get(task, {})
        split = config.get("test_split") or config.get("validation_split")
        for metric, filter_name, value in _task_metrics(metrics):
            entries.append({
                "task_name": task, "task_type": "text-generation", "dataset_name": task,
                "dataset_type": config.get("dataset_path") or task, "dataset_config": config.get("dataset_name"),
                "dataset_split": split, "metric_type": metric, "metric_value": round(value, 6),
                "metric_name": metric if filter_name == "none" else f"{metric} ({filter_name})",
                "metric_config": None if filter_name == "none" else filter_name,
                "metric_args": {"num_fewshot": results["n-shot"][task]} if task in results.get("n-shot", {}) else None,
                "source_name": "lm-evaluation-harness", "source_url": "https://github.com/EleutherAI/lm-evaluation-harness",
            })
    for name, value in _intrinsic(results).items():
        for metric in ("bits_per_byte", "perplexity"):
            entries.append({
                "task_name": "text-generation", "task_type": "text-generation", "dataset_name": name, "dataset_type": name,
                "dataset_config": None, "dataset_split": None, "metric_name": metric, "metric_type": metric,
                "metric_value": round(float(value[metric]), 6),
                "metric_args": {"max_length": value["max_length"], "stride": value["stride"]},
            })
    return [{k: v for k, v in entry.items() if v is not None} for entry in entries]


def add_eval_to_model_card(model_dir: str | os.PathLike, results: dict) -> Path:
    """Put the results into the card's `model-index` (hfscratch.model_card keeps the rest of README.md)."""
    return update_model_index(model_dir, model_index_entries(results))


def record_training_eval(run_dir: str | os.PathLike, metrics: dict[str, float], step: int | None = None, tokens: int | None = None) -> Path:
    path = Path(run_dir) / HISTORY_FILE
    if int(os.environ.get("RANK", "0")) != 0:  # every rank runs the hook; one line per evaluation is enough
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:  # append-only log; one line per evaluation
        handle.write(json.dumps({"step": step, "tokens": tokens, "metrics": metrics}) + "\n")
    return path


def collect_training_points(run_dir: Path) -> list[dict]:
    points = []
    history = run_dir / HISTORY_FILE
    if history.is_file():
        for line in history.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                points.append({"step": row.get("step"), "tokens": row.get("tokens"), "metrics": row.get("metrics", {})})
    for results_file in sorted(run_dir.rglob(RESULTS_JSON)):
        try:
            results = json.loads(results_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        if "results" not in results:
            continue
        info = results.get("hfscratch", {})
        progress = {"tokens": info.get("training_tokens"), "step": info.get("training_step")}
        if progress["tokens"] is None and progress["step"] is None:
            # results.json sits in <checkpoint>/<eval dir>/ or in the checkpoint folder itself
            found = next((p for p in map(training_progress, results_file.parents[:3]) if p), {})
            progress = {"tokens": found.get("tokens"), "step": found.get("step")}
        points.append({**progress, "metrics": flatten_results(results)})
    return points


def plot_scores_over_training(run_dir: str | os.PathLike, metrics: list[str] | None = None,
                              out_path: str | os.PathLike | None = None) -> Path:
    """PNG of each metric vs. training tokens (or steps when tokens are unknown) across one run's evaluations:
    run_dir/eval_history.jsonl (the in-training hook) and every results.json under run_dir."""
    plt = _pyplot()
    run = Path(run_dir)
    if not run.is_dir():
        raise HfscratchError(f"run folder {run} does not exist; pass the output folder of a pretraining run")
    points = [p for p in collect_training_points(run) if p["metrics"]]
    use_tokens = bool(points) and all(p.get("tokens") for p in points)
    points = [p for p in points if (p.get("tokens") if use_tokens else p.get("step")) is not None]
    if not points:
        raise HfscratchError(f"no evaluations with a step or token count under {run}; run `hfscratch eval CHECKPOINT --output_dir CHECKPOINT/eval` or the in-training eval first")
    names = sorted({n for p in points for n in p["metrics"]} if metrics is None else set(metrics))
    names = [n for n in names if not n.endswith("/perplexity") or metrics is not None] or names
    tasks = sorted({n.split("/", 1)[0] for n in names})
    fig, axes = plt.subplots(len(tasks), 1, figsize=(7, 2.6 * len(tasks)), squeeze=False)
    x_key = "tokens" if use_tokens else "step"
    for ax, task in zip(axes[:, 0], tasks):
        for name in [n for n in names if n.split("/", 1)[0] == task]:
            series = sorted((p[x_key], p["metrics"][name]) for p in points if name in p["metrics"])
            if series:
                ax.plot([s[0] for s in series], [s[1] for s in series], marker="o", label=name.split("/", 1)[1])
        ax.set_title(task)
        ax.set_xlabel("training tokens" if use_tokens else "step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    target = Path(out_path) if out_path else run / "scores_over_training.png"
    save_figure_atomically(fig, target, dpi=110)
    plt.close(fig)
    return target
