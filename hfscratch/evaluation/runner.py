"""Evaluate a model with lm-eval (`simple_evaluate` + `HFLM`) and write results people can read.

`evaluate_model` takes a model folder, a Hub id or an in-memory model. lm-eval's HFLM does the batched work:
generation is left-padded, batched and uses the KV cache (`model.generate(use_cache=True)`), scoring tasks are
batched forward passes, and both show a tqdm progress bar. Outputs (when `output_dir` is given): lm-eval's
results JSON, a markdown table, one PNG bar chart per task; `plot_scores_over_training(run_dir)` draws score
vs. training tokens across the checkpoints of one run. `run_training_eval` is the small in-training hook.

Generation budget: a generate_until task asks for up to `max_gen_toks` new tokens (the task's, or --max_gen_toks),
and lm-eval keeps only the last `context - max_gen_toks` prompt tokens. When the task's budget would not leave
room for its longest prompt (e.g. gsm8k_chat_local's 512 tokens in a 512-token model), it is lowered to
`context - longest prompt` (prompts measured as the model sees them: few-shot, chat template), announced in one
info line and recorded in results["hfscratch"]["generation_budget"]; when fewer than MIN_FITTED_GEN_TOKS tokens
(or the budget asked for, if smaller) would be left, that is a one-line ConfigError instead.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from ..atomic import save_figure_atomically, write_file_atomically
from ..errors import ConfigError, HfscratchError
from ..model_card import update_model_index
from .intrinsic import load_model_and_tokenizer, model_max_length, read_text_file, score_texts
from .tasks import load_planned_tasks, plan_tasks

logger = logging.getLogger(__name__)

# A fitted generation budget below this many tokens is refused: the answer would be cut off before it starts.
MIN_FITTED_GEN_TOKS = 16

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
HISTORY_FILE = "eval_history.jsonl"


class _QuietCustomDatasetNotice(logging.Filter):
    # lm-eval logs a generic "Custom kwargs can be passed to --metadata" warning for every custom_dataset task.
    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


logging.getLogger("lm_eval.api.task").addFilter(_QuietCustomDatasetNotice())


def flatten_results(results: dict, include_stderr: bool = False) -> dict[str, float]:
    """lm-eval's {"results": {task: {"acc,none": x}}} -> {"task/acc": x, "gsm8k/exact_match_strict-match": y}."""
    flat: dict[str, float] = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, filter_name = key.split(",", 1)
            if metric.endswith("_stderr") and not include_stderr:
                continue
            name = metric if filter_name == "none" else f"{metric}_{filter_name}"
            flat[f"{task}/{name}"] = float(value)
    for name, value in (results.get("hfscratch", {}).get("intrinsic", {}) or {}).items():
        for metric in ("bits_per_byte", "perplexity"):
            flat[f"{name}/{metric}"] = float(value[metric])
    return flat


def training_progress(model_dir: str | os.PathLike) -> dict[str, int]:
    """Step and tokens seen of a checkpoint, from its trainer state or folder name.

    hfscratch pretraining writes `checkpoints/checkpoint-0000100/{trainer_state.json, hf/}`, so the model folder's
    parent is looked at too; HF Trainer's `trainer_state.json` (global_step, num_input_tokens_seen) also works.
    """
    folder = Path(model_dir)
    for candidate in (folder, folder.parent):
        found: dict[str, int] = {}
        for name in ("trainer_state.json", "training_state.json"):
            state_file = candidate / name
            if not state_file.is_file():
                continue
            try:
                state = json.loads(state_file.read_text())
            except (OSError, json.JSONDecodeError):
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
    from lm_eval.utils import make_table

    parts = []
    if results.get("results"):
        parts.append(make_table(results))
    if results.get("groups"):
        parts.append(make_table(results, "groups"))
    intrinsic = (results.get("hfscratch", {}) or {}).get("intrinsic") or {}
    if intrinsic:
        lines = ["|text|bits/byte|perplexity|tokens|bytes|max_length|stride|", "|---|--:|--:|--:|--:|--:|--:|"]
        for name, value in intrinsic.items():
            lines.append(f"|{name}|{value['bits_per_byte']:.4f}|{value['perplexity']:.3f}|{value['tokens']}|{value['bytes']}|{value['max_length']}|{value['stride']}|")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def plot_task_bars(results: dict, output_dir: Path) -> list[Path]:
    """One PNG bar chart per task: each metric (per filter) with its stderr as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for task, metrics in results.get("results", {}).items():
        labels, values, errors = [], [], []
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, filter_name = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            labels.append(metric if filter_name == "none" else f"{metric}\n({filter_name})")
            values.append(float(value))
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
    from lm_eval.utils import handle_non_serializable

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = results.get("samples") or {}
    body = {k: v for k, v in results.items() if k != "samples"}
    written = [out / RESULTS_JSON, out / RESULTS_MD]
    write_file_atomically(written[0], json.dumps(body, indent=2, default=handle_non_serializable, ensure_ascii=False))
    write_file_atomically(written[1], results_markdown(results))
    for task, rows in samples.items():
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
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, filter_name = key.split(",", 1)
            entries.append({
                "task_name": task, "task_type": "text-generation",
                "dataset_name": task, "dataset_type": config.get("dataset_path") or task,
                "dataset_config": config.get("dataset_name"), "dataset_split": split,
                "metric_name": metric if filter_name == "none" else f"{metric} ({filter_name})",
                "metric_type": metric, "metric_value": round(float(value), 6),
                "metric_config": None if filter_name == "none" else filter_name,
                "metric_args": {"num_fewshot": results["n-shot"][task]} if task in results.get("n-shot", {}) else None,
                "source_name": "lm-evaluation-harness", "source_url": "https://github.com/EleutherAI/lm-evaluation-harness",
            })
    for name, value in (results.get("hfscratch", {}).get("intrinsic", {}) or {}).items():
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


def fit_generation_budget(task: str, longest_prompt: int, requested: int, context: int,
                          context_source: str = "max_position_embeddings") -> int:
    """Tokens task `task` may generate: `requested` if the longest prompt still fits beside it in `context`,
    else what is left (`context - longest_prompt`), as long as that is at least MIN_FITTED_GEN_TOKS (or
    `requested`, if smaller); otherwise a ConfigError naming the prompt length and the fixes."""
    room = context - longest_prompt
    if requested <= room:
        return requested
    if room >= min(MIN_FITTED_GEN_TOKS, requested):
        return room
    where = f"the {context}-token context ({context_source})"
    problem = (f"is longer than {where}" if room <= 0
               else f"leaves only {room} of {where} for the answer (at least {min(MIN_FITTED_GEN_TOKS, requested)} needed)")
    longer = "a larger --max_length" if context_source == "--max_length" else "a model with a longer context"
    raise ConfigError(
        f"task {task}: its longest prompt ({longest_prompt} tokens, few-shot examples and any chat template included) "
        f"{problem}; use fewer few-shot examples (--num_fewshot 0), a zero-shot variant of the task, or {longer}"
    )


@functools.cache  # one class per process, built on first use: importing lm-eval's HF model costs seconds
def _budget_fitting_hflm():
    """lm-eval's HFLM whose generate_until first fits each task's max_gen_toks to the context (`fit_generation_budget`)."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.utils import normalize_gen_kwargs

    class BudgetFittingHFLM(HFLM):
        context_source = "max_position_embeddings"
        announce = True

        def generate_until(self, requests, disable_tqdm: bool = False):
            by_task: dict[str, list] = {}
            for request in requests:
                by_task.setdefault(str(request.task_name), []).append(request)
            budgets = getattr(self, "generation_budgets", {})
            for task, task_requests in by_task.items():
                longest = max(len(self.tok_encode(r.args[0])) for r in task_requests)
                requested = max(int(normalize_gen_kwargs(r.args[1], self.max_gen_toks)["max_gen_toks"])
                                for r in task_requests)
                used = fit_generation_budget(task, longest, requested, self.max_length, self.context_source)
                if used < requested:
                    for r in task_requests:
                        r.args[1]["max_gen_toks"] = used  # the request's own copy of the task's generation_kwargs
                    if self.announce:
                        print(f"info: {task}: max_gen_toks {requested} -> {used}, so its longest prompt ({longest} tokens) "
                              f"fits the {self.max_length}-token context ({self.context_source})", file=sys.stderr, flush=True)
                budgets[task] = {"max_gen_toks": used, "requested_max_gen_toks": requested, "longest_prompt_tokens": longest,
                                 "context": self.max_length, "lowered": used < requested}
            self.generation_budgets = budgets
            return super().generate_until(requests, disable_tqdm=disable_tqdm)

    return BudgetFittingHFLM


def evaluate_model(
    model_or_path,
    tokenizer=None,
    tasks: list[str] | str = (),
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int | str = 8,
    data_dir: str | os.PathLike | None = None,
    apply_chat_template: bool = False,
    output_dir: str | os.PathLike | None = None,
    device: str | None = None,
    *,
    gen_kwargs: dict | None = None,
    include_path: list[str | os.PathLike] | None = None,
    bpb_files: list[str | os.PathLike] | None = None,
    max_length: int | None = None,
    stride: int | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    log_samples: bool = False,
    bootstrap_iters: int = 1000,
    seed: int = 1234,
    update_model_card: bool = False,
    training_tokens: int | None = None,
    verbose: bool = True,
) -> dict:
    """Run lm-eval tasks (and optionally bits-per-byte on text files) on one model; returns lm-eval's results dict.

    The dict gains an "hfscratch" entry: the tasks actually run (stock names mapped to local copies when a data
    folder is given), intrinsic metrics, training progress and the files written.
    """
    from lm_eval import simple_evaluate

    if isinstance(limit, float) and limit.is_integer() and limit >= 1:
        limit = int(limit)
    if limit is not None and limit <= 0:
        raise ConfigError(f"--limit must be positive (a count, or a fraction below 1), got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise ConfigError(f"--num_fewshot must be 0 or more, got {num_fewshot}")
    task_list = [t for t in (tasks.split(",") if isinstance(tasks, str) else list(tasks)) if t.strip()]
    if not task_list and not bpb_files:
        raise ConfigError("nothing to evaluate: pass --tasks (e.g. gsm8k_local,hellaswag_local) and/or --bpb FILE")

    # Check names, YAMLs and data before loading a model: those mistakes should cost no time.
    plan = loaded = None
    if task_list:
        plan = plan_tasks(task_list, data_dir=data_dir, include_path=include_path)
        loaded = load_planned_tasks(plan)

    model, tok = load_model_and_tokenizer(model_or_path, tokenizer, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    if apply_chat_template and not getattr(tok, "chat_template", None):
        raise ConfigError("--apply_chat_template needs a tokenizer with a chat template; this one has none (aligned models from `hfscratch sft` have one)")
    context = max_length or model_max_length(model)

    info: dict[str, Any] = {"model": str(model_or_path) if isinstance(model_or_path, (str, Path)) else type(model_or_path).__name__}
    if plan is not None:
        info.update(tasks=plan.names, renamed=plan.renamed, data_dir=str(plan.data_dir) if plan.data_dir else None)

    was_training = getattr(model, "training", False)
    # lm-eval bounds each generation by max_length = prompt + budget; a max_new_tokens saved in the model's
    # generation config (pretraining writes 256) would take precedence over that budget, so it is set aside here.
    generation_config = getattr(model, "generation_config", None)
    saved_max_new_tokens = getattr(generation_config, "max_new_tokens", None)
    results: dict[str, Any] = {}
    try:
        if saved_max_new_tokens is not None:
            generation_config.max_new_tokens = None
        if plan is not None:
            lm = _budget_fitting_hflm()(pretrained=model, tokenizer=tok, backend="causal", batch_size=batch_size,
                                        max_length=max_length)
            lm.context_source, lm.announce = ("--max_length" if max_length else "max_position_embeddings"), verbose
            results = simple_evaluate(
                model=lm, tasks=list(loaded["tasks"].values()) if not loaded["groups"] else plan.names,
                task_manager=plan.task_manager, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size,
                apply_chat_template=apply_chat_template, fewshot_as_multiturn=apply_chat_template, gen_kwargs=gen_kwargs,
                log_samples=log_samples, bootstrap_iters=bootstrap_iters, random_seed=seed, numpy_random_seed=seed,
                torch_random_seed=seed, fewshot_random_seed=seed, verbosity="WARNING" if not verbose else None,
            ) or {}
            budgets = getattr(lm, "generation_budgets", None)
            if budgets:  # what was generated with; lm-eval's config copy still shows the task's own max_gen_toks
                info["generation_budget"] = budgets
                for task, budget in budgets.items():
                    generation_kwargs = (results.get("configs", {}).get(task) or {}).get("generation_kwargs")
                    if budget["lowered"] and isinstance(generation_kwargs, dict):
                        generation_kwargs["max_gen_toks"] = budget["max_gen_toks"]
        if bpb_files:
            intrinsic = {}
            for path in bpb_files:
                text = read_text_file(path)
                window = int(max_length or min(context, 2048))
                step = int(stride or max(1, window // 2))
                scores = score_texts(model, tok, [text], max_length=window, stride=step, batch_size=4, progress=verbose)
                intrinsic[Path(path).name] = {**scores.as_dict(), "max_length": window, "stride": step, "file": str(path)}
            info["intrinsic"] = intrinsic
    finally:
        model.train(was_training)
        if saved_max_new_tokens is not None:
            generation_config.max_new_tokens = saved_max_new_tokens

    if training_tokens is not None:
        info["training_tokens"] = int(training_tokens)
    elif isinstance(model_or_path, (str, Path)) and Path(model_or_path).is_dir():
        info.update({f"training_{k}": v for k, v in training_progress(model_or_path).items()})
    results["hfscratch"] = info
    if output_dir is not None:
        info["files"] = [str(p) for p in write_eval_results(results, output_dir)]
    if update_model_card:
        if not (isinstance(model_or_path, (str, Path)) and Path(model_or_path).is_dir()):
            raise ConfigError("--write_model_card needs a local model folder to write README.md into")
        info["model_card"] = str(add_eval_to_model_card(model_or_path, results))
    return results


def run_training_eval(model, tokenizer, tasks: list[str], limit: int, data_dir: str | None, *,
                      step: int | None = None, tokens: int | None = None, run_dir: str | os.PathLike | None = None,
                      writer=None, batch_size: int = 8, max_gen_toks: int | None = None) -> dict[str, float]:
    """The pretraining loop's hook: a small lm-eval suite with `limit` rows per task on the live model.

    Returns flat metric names -> floats ("hellaswag_local/acc_norm"). Pass the unwrapped model (not DDP/FSDP);
    its train/eval mode is restored. With `writer` (a tensorboard SummaryWriter) and `step` the scores are
    logged as eval/<name>; with `run_dir` they are appended to run_dir/eval_history.jsonl, which
    `plot_scores_over_training` draws.
    """
    gen_kwargs = {"max_gen_toks": max_gen_toks} if max_gen_toks else None
    was_training = model.training
    try:
        results = evaluate_model(model, tokenizer, tasks=tasks, limit=limit, batch_size=batch_size, data_dir=data_dir,
                                 gen_kwargs=gen_kwargs, bootstrap_iters=0, verbose=False)
    finally:
        model.train(was_training)
    flat = flatten_results(results)
    if writer is not None:
        for name, value in flat.items():
            writer.add_scalar(f"eval/{name}", value, global_step=step)
    if run_dir is not None:
        record_training_eval(run_dir, flat, step=step, tokens=tokens)
    return flat


def record_training_eval(run_dir: str | os.PathLike, metrics: dict[str, float], step: int | None = None, tokens: int | None = None) -> Path:
    path = Path(run_dir) / HISTORY_FILE
    if int(os.environ.get("RANK", "0")) != 0:  # every rank runs the hook; one line per evaluation is enough
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:  # append-only log; one line per evaluation
        handle.write(json.dumps({"step": step, "tokens": tokens, "metrics": metrics}) + "\n")
    return path


def _collect_training_points(run_dir: Path) -> list[dict]:
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
            for folder in (results_file.parent, results_file.parent.parent, results_file.parent.parent.parent):
                found = training_progress(folder)
                if found:
                    progress = {"tokens": found.get("tokens"), "step": found.get("step")}
                    break
        points.append({**progress, "metrics": flatten_results(results)})
    return points


def plot_scores_over_training(run_dir: str | os.PathLike, metrics: list[str] | None = None,
                              out_path: str | os.PathLike | None = None) -> Path:
    """PNG of each metric vs. training tokens (or steps when tokens are unknown) across one run's evaluations.

    Reads run_dir/eval_history.jsonl (the in-training hook) and every results.json under run_dir (evaluations
    of saved checkpoints, whose trainer state or `checkpoint-<step>` name gives the position).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    if not run.is_dir():
        raise HfscratchError(f"run folder {run} does not exist; pass the output folder of a pretraining run")
    points = [p for p in _collect_training_points(run) if p["metrics"]]
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
