"""`hfscratch speedrun`: data -> tokenizer -> pretrain -> SFT -> reward model -> RLHF -> eval in one command.

Each stage runs as a subprocess of its own command (`python -m hfscratch.cli <stage> --config BASE ...`) on the
previous stage's folder, with the speedrun config's per-stage overrides, and writes `<output_root>/<stage>/`. A stage
whose folder is complete is reused, so a killed speedrun continues from the first missing stage. Before it starts
it prints a time (and GPU cost) estimate from measured per-step rates; at the end it writes `REPORT.md` with plots.

    hfscratch speedrun                      # the CPU default (speedrun.yaml): the whole chain in under 20 minutes
    hfscratch speedrun --estimate_only      # the plan and the estimate, nothing run
    hfscratch speedrun --redo sft           # SFT again, and every stage after it (they read its output)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from .atomic import save_figure_atomically, write_file_atomically
from .errors import CheckpointError, ConfigError, DataError
from .options import load_yaml_config, option, parse_config
from .training.metrics import GPU_PEAK_FLOPS

STAGES = ("data", "pretrain", "sft", "reward", "rlhf", "eval")
STATE_FILE = "speedrun.json"  # marks an output root as a speedrun's and records each stage's command and time
REPORT = "REPORT.md"
# The options each stage's wiring sets (input and output folders): the chain breaks if an override changes them.
WIRED = {"data": ("output_root", "name"), "pretrain": ("dataset_path", "tokenizer_path", "block_size", "output_dir"),
         "sft": ("model_name_or_path", "output_dir"), "reward": ("model_name_or_path", "output_dir"),
         "rlhf": ("model_name_or_path", "reward_model_name_or_path", "output_dir"),
         "eval": ("output_dir", "write_model_card")}


@dataclass
class StageSettings:
    base_config: str | None = option(None, "the stage's own YAML (a shipped name or a file) the overrides apply to; None = the command's default")
    args: dict = option({}, "overrides passed to the stage as --key value (true: a bare flag; lists: several values); see `hfscratch STAGE --help`")
    seconds_per_step: float = option(0.0, "measured seconds per step (eval: per row) on the config's reference machine, for the estimate")
    overhead_s: float = option(0.0, "measured seconds besides the steps (imports, loading, held-out metrics), for the estimate")


def _stage(base: str | None) -> StageSettings:
    return field(default_factory=lambda: StageSettings(base_config=base))


@dataclass
class SpeedrunConfig:
    """The whole chain in one command, each stage on the previous one's folder, with a report card."""

    output_root: str = option("outputs/speedrun", "every stage writes <output_root>/<stage>/; REPORT.md and the plots go here")
    force: bool = option(False, "rerun every stage even where its folder is complete")
    redo: list[str] = option([], "rerun these stages and every stage after them (they read the redone output)")
    stages: list[str] = option(list(STAGES), "run only these stages; the folders of the others must already be there")
    estimate_only: bool = option(False, "print the plan and the time estimate, run nothing")
    cpu_threads: int = option(0, "torch CPU threads per stage (OMP_NUM_THREADS); 0 = torch's default, every core")
    reference_machine: str = option("", "where the stages' seconds_per_step were measured (printed with the estimate)")
    reference_cpu_cores: int = option(2, "CPU cores of the reference machine (a CPU estimate scales by reference / found cores)")
    reference_gpu: str | None = option(None, "GPU the rates are for (a GPU estimate scales by its peak bf16 FLOP/s / the found GPU's)")
    gpu_dollars_per_hour: float = option(0.0, "assumed price of one GPU-hour, for the cost estimate (0: no cost line)")
    data: StageSettings = _stage("data_synthetic_math")
    pretrain: StageSettings = _stage("pretrain_tiny")
    sft: StageSettings = _stage("sft_synthetic_math")
    reward: StageSettings = _stage("reward_synthetic_math")
    rlhf: StageSettings = _stage("rlhf_synthetic_math")
    eval: StageSettings = _stage(None)

    def __post_init__(self):
        for name in (*self.redo, *self.stages):
            if name not in STAGES:
                raise ConfigError(f"unknown stage {name!r} in --redo/--stages; choose from {', '.join(STAGES)}")
        if not self.stages:
            raise ConfigError("--stages is empty; name at least one of " + ", ".join(STAGES))
        if self.reference_cpu_cores < 1 or self.gpu_dollars_per_hour < 0 or self.cpu_threads < 0:
            raise ConfigError("reference_cpu_cores must be >= 1, gpu_dollars_per_hour and cpu_threads >= 0")
        for name in STAGES:
            settings = getattr(self, name)
            clash = sorted(set(settings.args) & set(WIRED[name]))
            if clash:
                raise ConfigError(f"{name}.args sets {', '.join(clash)}, which the speedrun wires from stage to stage; "
                                  f"remove it (outputs go to <output_root>/{name})")
            if settings.seconds_per_step < 0 or settings.overhead_s < 0:
                raise ConfigError(f"{name}: seconds_per_step and overhead_s must be >= 0")

    @property
    def root(self) -> Path:
        return Path(self.output_root)


# ---------------------------------------------------------------- the stages' folders


def stage_dir(config: SpeedrunConfig, stage: str) -> Path:
    return config.root / stage


def product(config: SpeedrunConfig, stage: str) -> Path:
    """The folder the next stage reads (and whose completeness decides reuse)."""
    return stage_dir(config, stage) / ("" if stage in ("data", "eval") else "final")


def problem_with(config: SpeedrunConfig, stage: str) -> str | None:
    """None when the stage's product is complete; else what is missing or broken (for the error line)."""
    folder = product(config, stage)
    if not folder.is_dir():
        return f"{folder} does not exist"
    if stage == "data":
        needed = ["manifest.json", "tokenizer/tokenizer.json", "packed/dataset_dict.json"]
    elif stage == "eval":
        needed = ["results.json"]
    else:
        needed = ["config.json", "model.safetensors", "tokenizer.json"]
    if missing := [name for name in needed if not (folder / name).is_file()]:
        return f"{folder} lacks {', '.join(missing)}"
    for name in needed:
        if name.endswith(".json"):
            try:
                json.loads((folder / name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return f"{folder / name} is not valid JSON"
    if "model.safetensors" in needed:
        try:  # reads the header only; a truncated file fails here (its offsets point past the end)
            with safe_open(folder / "model.safetensors", framework="pt") as weights:
                if not list(weights.keys()):
                    return f"{folder}/model.safetensors holds no tensors"
        except Exception as err:  # safetensors raises its own error types for a damaged file
            return f"{folder}/model.safetensors is unreadable ({str(err).splitlines()[0][:120]})"
    return None


def _argv_from(args: dict) -> list[str]:
    """YAML overrides as the command line the stages parse: true is a bare flag (also for eval's argparse switches),
    a list several words, a mapping JSON, None `none`."""
    out = []
    for key, value in args.items():
        if value is True:
            out.append(f"--{key}")
        elif isinstance(value, (list, tuple)):
            out += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            out += [f"--{key}", json.dumps(value)]
        else:
            out += [f"--{key}", "none" if value is None else "false" if value is False else str(value)]
    return out


def stage_command(config: SpeedrunConfig, stage: str) -> list[str]:
    """The stage's command line: its base config, the overrides, then the wiring (last, so it wins)."""
    settings, root = getattr(config, stage), config.root
    base = ["--config", settings.base_config] if settings.base_config else []
    if stage == "data":
        wiring = ["--output_root", str(root), "--name", "data"]
    elif stage == "pretrain":
        data = product(config, "data")
        manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
        # The packed folder itself, not a re-preparation from a copy of the data config: nothing can rebuild it.
        wiring = ["--dataset_path", str(data / "packed"), "--tokenizer_path", str(data / "tokenizer"),
                  "--block_size", str(manifest["pack"]["block_size"]), "--output_dir", str(stage_dir(config, stage))]
        checkpoints = stage_dir(config, stage) / "checkpoints"
        if checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*")):
            wiring += ["--resume_from_checkpoint", "latest"]  # a killed speedrun continues this run exactly
        elif stage_dir(config, stage).exists():
            wiring += ["--overwrite_output_dir"]  # an unfinished run of ours without a checkpoint
    elif stage == "eval":
        return ["eval", str(product(config, "rlhf")), *_argv_from(settings.args),
                "--output_dir", str(stage_dir(config, stage)), "--write_model_card"]
    else:
        source = {"sft": "pretrain", "reward": "sft", "rlhf": "sft"}[stage]
        wiring = ["--model_name_or_path", str(product(config, source)), "--output_dir", str(stage_dir(config, stage))]
        if stage == "rlhf":
            wiring += ["--reward_model_name_or_path", str(product(config, "reward"))]
    return [stage, *base, *_argv_from(settings.args), *wiring]


def inputs_of(stage: str) -> list[str]:
    return {"data": [], "pretrain": ["data"], "sft": ["pretrain"], "reward": ["sft"], "rlhf": ["sft", "reward"],
            "eval": ["rlhf"]}[stage]


def plan(config: SpeedrunConfig) -> dict[str, str]:
    """stage -> "run" | "reuse" | "skip" (not selected). From the first stage to redo or missing on, every selected
    stage runs: a later folder was built on the old output. A broken folder is an error, not a silent rebuild."""
    actions, rerun = {}, False
    for stage in STAGES:
        selected = stage in config.stages
        problem = problem_with(config, stage)
        broken = problem is not None and stage_dir(config, stage).exists() and not _unfinished(config, stage)
        if selected and broken and not (config.force or stage in config.redo or rerun):
            raise CheckpointError(f"{problem}: the {stage} stage's folder is incomplete or corrupt; rerun it with "
                                  f"`hfscratch speedrun --redo {stage}`")
        rerun = rerun or (selected and (config.force or stage in config.redo or problem is not None))
        actions[stage] = "skip" if not selected else "run" if rerun else "reuse"
    for stage in STAGES:
        if actions[stage] != "run":
            continue
        for needed in inputs_of(stage):
            if actions[needed] == "skip" and (problem := problem_with(config, needed)):
                raise DataError(f"{stage} reads the {needed} stage's output, but {problem}; run it first: "
                                f"`hfscratch speedrun --stages {' '.join(STAGES[STAGES.index(needed):STAGES.index(stage) + 1])}` "
                                "(or the whole chain: `hfscratch speedrun`)")
    return actions


def _unfinished(config: SpeedrunConfig, stage: str) -> bool:
    """A stage folder a killed run left (its state file says it started and never finished): rerun, not an error."""
    return _load_state(config).get("stages", {}).get(stage, {}).get("status") == "running"


# ---------------------------------------------------------------- the estimate


def stage_steps(config: SpeedrunConfig, stage: str) -> int:
    """The stage's step count (eval: rows): its override, else its base config's `train.max_steps`."""
    settings = getattr(config, stage)
    key = "limit" if stage == "eval" else "max_steps"
    value = settings.args.get(key)
    if key not in settings.args and settings.base_config:
        value = (load_yaml_config(settings.base_config).get("train") or {}).get(key)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def machine() -> tuple[str, float]:
    """(what this machine is, how much faster than the reference machine it should be) - for the estimate."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return name, 1.0  # scaled against the reference GPU in estimate()
    cores = os.cpu_count() or 1
    return f"{cores} CPU cores (no GPU)", float(cores)


def _gpu_peak(name: str | None) -> float | None:
    return next((row[1] for row in GPU_PEAK_FLOPS if name and row[0] in name), None)


def estimate(config: SpeedrunConfig, actions: dict[str, str]) -> tuple[dict[str, float], list[str]]:
    """Seconds per stage to run (overhead + steps x seconds_per_step, scaled to this machine) and the lines to print."""
    found, cores = machine()
    if torch.cuda.is_available():
        ours, theirs = _gpu_peak(found), _gpu_peak(config.reference_gpu)
        speedup = ours / theirs if ours and theirs else 1.0
        how = (f"per-step rates for {config.reference_gpu} (the config) scaled by peak bf16 FLOP/s ({speedup:.2f}x)"
               if ours and theirs else "rates used as written (this GPU is not in the peak-FLOP/s table)")
    elif config.reference_gpu:  # a GPU config on a machine without one: show what it takes where it is meant to run
        speedup = 1.0
        how = f"no GPU here: times on the config's {config.reference_gpu} (this CPU would take orders of magnitude longer)"
    elif config.cpu_threads:  # the config's rates were measured with this thread count: more cores do not help
        speedup = 1.0
        how = f"per-step rates measured with {config.cpu_threads} thread(s) per stage (the config), used as they are"
    else:
        # Torch uses every core; a 2-core rate on more cores is a guess that it scales linearly (it does not quite).
        speedup = max(0.25, min(4.0, cores / config.reference_cpu_cores))
        how = f"per-step rates measured on {config.reference_cpu_cores} CPU cores (the config), scaled by {speedup:.2f}x"
    seconds = {}
    lines = [f"speedrun plan ({config.output_root}) on {found}; estimate: {how}:",
             f"  {'stage':<9}{'action':<8}{'steps':>7}{'estimate':>11}  command"]
    for stage in STAGES:
        settings, steps = getattr(config, stage), stage_steps(config, stage)
        seconds[stage] = (settings.overhead_s + steps * settings.seconds_per_step) / speedup if actions[stage] == "run" else 0.0
        shown = "hfscratch " + " ".join(_shown_command(config, stage))
        lines.append(f"  {stage:<9}{actions[stage]:<8}{steps or '-':>7}{_duration(seconds[stage]):>11}  {shown}")
    total = sum(seconds.values())
    lines.append(f"  estimated total: {_duration(total) if total else 'nothing to run (every stage reused)'}" + (f" (reference machine: {config.reference_machine})" if config.reference_machine else ""))
    if (torch.cuda.is_available() or config.reference_gpu) and config.gpu_dollars_per_hour:
        lines.append(f"  estimated cost: ${total / 3600 * config.gpu_dollars_per_hour:,.2f} at an assumed "
                     f"${config.gpu_dollars_per_hour:.2f} per GPU-hour (1 GPU; gpu_dollars_per_hour in the config)")
    return seconds, lines


def _shown_command(config: SpeedrunConfig, stage: str) -> list[str]:
    try:
        return stage_command(config, stage)
    except (OSError, ValueError, KeyError):  # pretrain's wiring reads the data manifest, not there before data runs
        return [stage, "..."]


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


# ---------------------------------------------------------------- running


def _load_state(config: SpeedrunConfig) -> dict:
    try:
        return json.loads((config.root / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _save_state(config: SpeedrunConfig, state: dict) -> None:
    write_file_atomically(config.root / STATE_FILE, json.dumps(state, indent=1) + "\n")


def check_output_root(config: SpeedrunConfig) -> None:
    """Refuse a non-empty folder that is not a speedrun's: the speedrun replaces unfinished stage folders in it."""
    root = config.root
    if root.is_dir() and any(root.iterdir()) and not (root / STATE_FILE).is_file():
        raise ConfigError(f"{root} already holds files that are not a speedrun's; pass --output_root NEW_FOLDER")


def clear_stage(config: SpeedrunConfig, stage: str, resume: bool) -> None:
    """Remove what a redone stage or a killed run left in the stage's folder (only pretraining resumes its own)."""
    folder = stage_dir(config, stage)
    if folder.exists() and not resume:
        print(f"removing {folder} (rebuilt by this run)", flush=True)
        shutil.rmtree(folder)


def run_stage(config: SpeedrunConfig, stage: str, number: int, argv: list[str]) -> float:
    """Run one stage's command as a subprocess, its output shown and kept in logs/<stage>.log; its wall time."""
    command = [sys.executable, "-m", "hfscratch.cli", *argv]
    log_path = config.root / "logs" / f"{stage}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"\n[{number}/{len(STAGES)}] {stage}: hfscratch {' '.join(argv)}", flush=True)
    start, tail = time.time(), b""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the child's lines (and progress bars) arrive as they are written
    if config.cpu_threads:
        env["OMP_NUM_THREADS"] = str(config.cpu_threads)
    with open(log_path, "wb") as log, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as child:
        try:
            while chunk := child.stdout.read1(65536):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                log.write(chunk)
                tail = (tail + chunk)[-4000:]
        except BaseException:  # Ctrl-C or SIGTERM: stop the stage too, not leave it training unwatched
            child.terminate()
            child.wait()
            raise
    if not tail.endswith(b"\n"):  # a progress bar's last line ends in \r: the next line starts on its own
        print(flush=True)
    seconds = time.time() - start
    if child.returncode != 0:
        lines = [line.strip() for line in tail.decode("utf-8", "replace").replace("\r", "\n").splitlines() if line.strip()]
        last = next((line.removeprefix("error:").strip() for line in reversed(lines) if line.startswith("error:")), None)
        why = last or (f"killed by signal {-child.returncode}" if child.returncode < 0 else lines[-1] if lines else "no output")
        raise DataError(f"the {stage} stage failed (exit {child.returncode}): {why[:300]} - full log {log_path}; "
                        f"fix it and rerun `hfscratch speedrun` to continue from {stage}")
    if problem := problem_with(config, stage):
        raise CheckpointError(f"the {stage} stage exited cleanly but {problem}; see {log_path}")
    return seconds


def run_speedrun(config: SpeedrunConfig) -> Path | None:
    check_output_root(config)
    actions = plan(config)
    seconds, lines = estimate(config, actions)
    print("\n".join(lines), flush=True)
    if config.estimate_only:
        return None
    config.root.mkdir(parents=True, exist_ok=True)
    state = _load_state(config)
    state.setdefault("stages", {})
    state["config"] = asdict(config)
    started = time.time()
    for number, stage in enumerate(STAGES, 1):
        if actions[stage] != "run":
            if actions[stage] == "reuse":
                print(f"[{number}/{len(STAGES)}] {stage}: reusing {product(config, stage)}", flush=True)
            continue
        # A pretraining run a killed speedrun left continues from its last checkpoint (exact resume); anything else
        # unfinished or asked to be redone starts clean.
        resume = stage == "pretrain" and _unfinished(config, stage) and not (config.force or stage in config.redo)
        clear_stage(config, stage, resume)
        argv = stage_command(config, stage)
        record = {"status": "running", "command": ["hfscratch", *argv], "estimate_s": round(seconds[stage], 1)}
        state["stages"][stage] = record
        _save_state(config, state)
        record["seconds"] = round(run_stage(config, stage, number, argv), 1)
        record["status"] = "done"
        record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        _save_state(config, state)
    state["last_run_seconds"] = round(time.time() - started, 1)
    state["machine"] = machine()[0]
    _save_state(config, state)
    return write_report(config, state, actions)


# ---------------------------------------------------------------- the report


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
             f"Machine: {state.get('machine', machine()[0])}. Stage times: {_duration(total)} in all "
             f"(this invocation: {_duration(state.get('last_run_seconds', 0))}; reused stages keep the time of the run that built them).",
             "", "| stage | this run | time | estimate | before → after |", "|---|---|--:|--:|---|"]
    for stage in STAGES:
        record, numbers = stages.get(stage, {}), found[stage]
        shown = numbers.get("before_after") or (f"{numbers['before']} → {numbers.get('after', 'n/a')}" if "before" in numbers
                                                else numbers.get("after", "n/a"))
        lines.append(f"| {stage} | {actions.get(stage, '')} | {_duration(record.get('seconds', 0))} | "
                     f"{_duration(record.get('estimate_s', 0))} | {shown} |")
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


def _stop(signum, frame):
    raise KeyboardInterrupt  # so a running stage is terminated with the speedrun (the CLI reports "interrupted")


def main(argv: list[str]) -> int:
    config = parse_config(SpeedrunConfig, argv, prog="hfscratch speedrun", default_config="speedrun")
    signal.signal(signal.SIGTERM, _stop)
    run_speedrun(config)
    return 0
