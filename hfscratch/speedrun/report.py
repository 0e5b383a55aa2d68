"""The speedrun's report card: the numbers each stage left in its folder, three plots and `REPORT.md`."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..atomic import save_figure_atomically, write_file_atomically
from .config import REPORT, STAGES, SpeedrunConfig, format_duration, machine, product, stage_dir


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _scalars(folder: Path, prefix: str = "train/") -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars a stage logged (TRL writes them under its output_dir): tag -> [(step, value)]."""
    files = sorted(folder.rglob("events.out.tfevents.*")) if folder.is_dir() else []
    if not files:
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # lazily: slow to import

    series: dict[str, list[tuple[int, float]]] = {}
    for path in files:
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags().get("scalars", []):
            if tag.startswith(prefix):
                series.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return {tag: sorted(points) for tag, points in series.items()}


def _fmt(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _pair(results: dict, key: str, digits: int = 3) -> str:
    before, after = (results.get("before") or {}).get(key), (results.get("after") or {}).get(key)
    return f"{key} {_fmt(before, digits)} → {_fmt(after, digits)}"


def gather(config: SpeedrunConfig) -> dict[str, dict]:
    """Per stage: the numbers the report shows (before/after text, bars for the chart, curves)."""
    found: dict[str, dict] = {stage: {} for stage in STAGES}
    manifest = _read_json(product(config, "data") / "manifest.json")
    if manifest:
        tokenizer, train = manifest.get("tokenizer", {}), manifest.get("splits", {}).get("train", {})
        found["data"]["after"] = (f"{train.get('tokens', 0):,} train tokens in {train.get('blocks', 0):,} blocks; BPE vocab "
                                  f"{tokenizer.get('vocab_size')}, {_fmt(tokenizer.get('bytes_per_token'), 2)} bytes/token")
    bytes_per_token = (manifest.get("tokenizer") or {}).get("bytes_per_token")
    metrics = _read_json(product(config, "pretrain") / "training_metrics.json")
    if metrics:
        history = [(s, v) for s, v in metrics.get("loss_history", []) if v is not None]
        m = metrics.get("metrics", {})
        first = history[0][1] if history else None
        # The untrained model's loss, read off its first training step; bits/byte from it through the tokenizer's
        # bytes/token (the trained model's bits/byte is measured on the validation bytes directly).
        first_bpb = first / (math.log(2) * bytes_per_token) if first and bytes_per_token else None
        found["pretrain"].update(
            before=f"loss {_fmt(first)} (step 1, train) ≈ {_fmt(first_bpb)} bits/byte",
            after=f"val loss {_fmt(m.get('val_loss'))}, {_fmt(m.get('val_bits_per_byte'), 4)} bits/byte, ppl {_fmt(m.get('val_perplexity'), 2)}",
            bars={"loss": (first, m.get("val_loss")), "bits/byte": (first_bpb, m.get("val_bits_per_byte"))},
            curves={"train loss": history, "validation loss": metrics.get("validation_history", [])})
    keys = {"sft": ["exact_match", "format_rate", "eos_rate"], "reward": ["accuracy", "margin"],
            "rlhf": ["learned_reward", "exact_match", "completion_tokens", "mean_reward"]}
    for stage, shown in keys.items():
        results = _read_json(stage_dir(config, stage) / "alignment_results.json")
        if not results:
            continue
        before, after = results.get("before") or {}, results.get("after") or {}
        present = [k for k in shown if k in after]
        found[stage].update(before_after=", ".join(_pair(results, k) for k in present),
                            bars={k: (before.get(k), after.get(k)) for k in present if k != "completion_tokens"},
                            n=after.get("n"), results=results)
        scalars = _scalars(stage_dir(config, stage))
        found[stage]["curves"] = {tag.removeprefix("train/"): points for tag, points in scalars.items()}
        if "loss" not in found[stage]["curves"] and results.get("train_loss"):
            found[stage]["curves"]["loss"] = list(enumerate(v for v in results["train_loss"] if v is not None))
        if stage == "reward":
            found[stage]["before_after"] += (f"; a length-only rule scores {_fmt(after.get('length_baseline_accuracy'))}"
                                             f" (prefer longer) / {_fmt(after.get('shorter_baseline_accuracy'))} (prefer shorter)")
            found[stage]["bars"]["length-only rule"] = (after.get("length_baseline_accuracy"),) * 2
        if stage == "rlhf":
            found[stage]["before_after"] = found[stage]["before_after"].replace("completion_tokens", "length (tokens)")
    evaluation = _read_json(product(config, "eval") / "results.json")
    scores = {}
    for task, values in (evaluation.get("results") or {}).items():
        for name, value in values.items():
            if name.startswith("exact_match,") and isinstance(value, (int, float)):
                scores[f"{task} {name.split(',', 1)[1]}"] = value
    if scores:
        rows = (evaluation.get("n-samples") or {})
        n = next((v.get("effective") for v in rows.values() if isinstance(v, dict)), None)
        found["eval"].update(after=", ".join(f"{k} {_fmt(v)}" for k, v in scores.items()) + (f" (n={n})" if n else ""),
                             scores=scores)
    return found


def plot_losses(found: dict, path: Path) -> Path:
    from matplotlib.figure import Figure  # lazily: slow to import; a bare Figure needs no pyplot or GUI backend

    panels = [("pretrain", ["train loss", "validation loss"]), ("sft", ["loss"]), ("reward", ["loss", "accuracy"])]
    fig = Figure(figsize=(13, 3.8))
    for ax, (stage, tags) in zip(fig.subplots(1, len(panels)), panels):
        curves = found[stage].get("curves") or {}
        for tag in tags:
            if points := curves.get(tag):
                xs, ys = zip(*points)
                ax.plot(xs, ys, "o-" if len(xs) < 12 else "-", ms=3, label=tag)
        ax.set_title(f"{stage}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle("training loss per stage")
    fig.tight_layout()
    return save_figure_atomically(fig, path, dpi=100)


def plot_rl(found: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    curves = found["rlhf"].get("curves") or {}
    fig = Figure(figsize=(11, 3.8))
    left, right = fig.subplots(1, 2)
    kl = right.twinx()  # KL is ~0.01 where lengths are ~30 tokens: one axis each
    for tag, points in sorted(curves.items()):
        xs, ys = zip(*points)
        style = {"marker": "o" if len(xs) < 12 else None, "ms": 3}
        if tag == "reward":
            left.plot(xs, ys, lw=2, color="black", label="total (weighted sum)", **style)
        elif tag.startswith("rewards/") and tag.endswith("/mean"):
            name = tag.split("/")[1]
            # TRL names a reward-model reward after the model's folder; the verifiable ones after their functions
            label = name if name.endswith("_reward") else f"learned reward (reward model {name!r})"
            left.plot(xs, ys, lw=1, label=label, **style)
        elif tag == "completions/mean_length":
            right.plot(xs, ys, color="tab:blue", label="completion length (tokens)", **style)
        elif tag == "kl":
            kl.plot(xs, ys, color="tab:red", label="KL to the SFT model", **style)
    left.set_title("RLHF: reward during training (batch mean, unweighted)")
    right.set_title("RLHF: completion length and KL")
    kl.set_ylabel("KL", color="tab:red")
    right.set_ylabel("tokens", color="tab:blue")
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize=8)
    handles = right.get_legend_handles_labels()[0] + kl.get_legend_handles_labels()[0]
    if handles:
        right.legend(handles=handles, fontsize=8)
    fig.tight_layout()
    return save_figure_atomically(fig, path, dpi=100)


def plot_before_after(found: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    stages = ["pretrain", "sft", "reward", "rlhf"]
    fig = Figure(figsize=(15, 3.8))
    for ax, stage in zip(fig.subplots(1, len(stages)), stages):
        bars = {k: v for k, v in (found[stage].get("bars") or {}).items() if None not in v}
        xs = range(len(bars))
        ax.bar([x - 0.2 for x in xs], [b for b, _ in bars.values()], width=0.4, label="before")
        ax.bar([x + 0.2 for x in xs], [a for _, a in bars.values()], width=0.4, label="after")
        ax.set_xticks(list(xs), list(bars), rotation=20, fontsize=8)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(stage + (f" (n={found[stage]['n']})" if found[stage].get("n") else ""))
        if bars:
            ax.legend(fontsize=8)
    fig.suptitle("before and after each stage (held out)")
    fig.tight_layout()
    return save_figure_atomically(fig, path, dpi=100)


def write_report(config: SpeedrunConfig, state: dict, actions: dict[str, str]) -> Path:
    root, found = config.root, gather(config)
    plots = [plot_losses(found, root / "loss_curves.png"), plot_rl(found, root / "rl_reward.png"),
             plot_before_after(found, root / "before_after.png")]
    card = product(config, "rlhf") / "README.md"
    if card.is_file():
        write_file_atomically(root / "MODEL_CARD.md", card.read_text(encoding="utf-8"))
    stages = state.get("stages", {})
    total = sum(stages.get(s, {}).get("seconds", 0.0) for s in STAGES)
    lines = ["# Speedrun report", "",
             f"Machine: {state.get('machine', machine()[0])}. Stage times: {format_duration(total)} in all "
             f"(this invocation: {format_duration(state.get('last_run_seconds', 0))}; reused stages keep the time of the run that built them).",
             "", "| stage | this run | time | estimate | before → after |", "|---|---|--:|--:|---|"]
    for stage in STAGES:
        record, numbers = stages.get(stage, {}), found[stage]
        shown = numbers.get("before_after") or (f"{numbers['before']} → {numbers.get('after', 'n/a')}" if "before" in numbers
                                                else numbers.get("after", "n/a"))
        lines.append(f"| {stage} | {actions.get(stage, '')} | {format_duration(record.get('seconds', 0))} | "
                     f"{format_duration(record.get('estimate_s', 0))} | {shown} |")
    lines += ["", "Held out: pretrain on the validation blocks; SFT/RLHF greedy exact-match on the synthetic generator's "
              "held-out split; reward pairwise accuracy on held-out preference pairs; eval on GSM8K test (lm-eval).", "",
              "![loss curves](loss_curves.png)", "", "![reward during RL](rl_reward.png)", "",
              "![before and after](before_after.png)", "", "## Commands", ""]
    for stage in STAGES:
        record = stages.get(stage, {})
        if record.get("command"):
            lines += [f"- **{stage}** ({record.get('status')}, {record.get('finished', '')}): "
                      f"`{' '.join(record['command'])}`"]
    lines += ["", "## Model card", "",
              f"The final model is `{product(config, 'rlhf')}`; its card with the `model-index` of the eval step: "
              + ("[MODEL_CARD.md](MODEL_CARD.md)." if card.is_file() else "not written (the eval stage has not run).")]
    path = write_file_atomically(root / REPORT, "\n".join(lines) + "\n")
    print(f"\nwrote {path} and {', '.join(p.name for p in plots)}", flush=True)
    return path


