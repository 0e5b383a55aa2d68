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
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open

from ..atomic import write_file_atomically
from ..errors import CheckpointError, ConfigError, DataError
from ..options import load_yaml_config, parse_config
from ..training.metrics import GPU_PEAK_FLOPS
from .config import STAGES, STATE_FILE, SpeedrunConfig, format_duration, machine, product, stage_dir
from .report import write_report


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
        lines.append(f"  {stage:<9}{actions[stage]:<8}{steps or '-':>7}{format_duration(seconds[stage]):>11}  {shown}")
    total = sum(seconds.values())
    lines.append(f"  estimated total: {format_duration(total) if total else 'nothing to run (every stage reused)'}" + (f" (reference machine: {config.reference_machine})" if config.reference_machine else ""))
    if (torch.cuda.is_available() or config.reference_gpu) and config.gpu_dollars_per_hour:
        lines.append(f"  estimated cost: ${total / 3600 * config.gpu_dollars_per_hour:,.2f} at an assumed "
                     f"${config.gpu_dollars_per_hour:.2f} per GPU-hour (1 GPU; gpu_dollars_per_hour in the config)")
    return seconds, lines


def _shown_command(config: SpeedrunConfig, stage: str) -> list[str]:
    try:
        return stage_command(config, stage)
    except (OSError, ValueError, KeyError):  # pretrain's wiring reads the data manifest, not there before data runs
        return [stage, "..."]




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


def _stop(signum, frame):
    raise KeyboardInterrupt  # so a running stage is terminated with the speedrun (the CLI reports "interrupted")


def main(argv: list[str]) -> int:
    config = parse_config(SpeedrunConfig, argv, prog="hfscratch speedrun", default_config="speedrun")
    signal.signal(signal.SIGTERM, _stop)
    run_speedrun(config)
    return 0
