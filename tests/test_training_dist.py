"""Pretraining across processes: SIGKILL mid-run + resume == uninterrupted (exact, CPU fp32), 2-process DDP ==
1 process, and the recipe's command-line errors (exit code 2, one line). Uses subprocesses (slow to start)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hfscratch.options import parse_config
from hfscratch.training import PretrainConfig, pretrain
from hfscratch.training import checkpoint as ckpt
from hfscratch.training.config import flat_config
from tests.test_training_loop import TINY_MODEL, make_args, shakespeare_data, shakespeare_on_disk  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "pretrain.py"


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _recipe_argv(data_root: Path, output_dir: Path, **overrides) -> list[str]:
    # peak_flops: MFU against a set number instead of each process's 1-second CPU matmul probe (one per rank, per
    # launch); these runs check losses, checkpoints and folders, never MFU.
    values = dict(
        dataset_path=data_root / "ds", tokenizer_path=data_root / "tok", output_dir=output_dir, report_to="none", eval_steps=0, eval_max_batches=4,
        sample_max_new_tokens=8, spike_zscore=0.0, optimizer="adamw", learning_rate=3e-3, warmup_steps=2, logging_steps=4, peak_flops=1e11,
        **{k: v for k, v in TINY_MODEL.items()},
    )
    values.update(overrides)
    return [a for k, v in values.items() for a in (f"--{k}", str(v))]


def _losses(output_dir: Path) -> list:
    return json.loads((output_dir / "final" / "training_metrics.json").read_text())["loss_history"]


def test_sigkill_then_resume_reproduces_the_uninterrupted_loss_sequence(tmp_path, shakespeare_data, shakespeare_on_disk):  # noqa: F811
    common = dict(max_steps=24, save_steps=8, per_device_train_batch_size=8, block_size=64)
    # The reference: an uninterrupted run (in process; same code path, same CPU fp32 arithmetic).
    model_args, data_args, args = make_args(tmp_path, max_steps=24, save_steps=8, per_device_train_batch_size=8, output_dir=str(tmp_path / "ref"))
    reference = pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    ref_losses = [[s, v] for s, v in reference.loss_history]

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(RECIPE), *_recipe_argv(shakespeare_on_disk, out, **common)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=tmp_path,
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "checkpoint saved" in line and "checkpoint-0000008" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-2000:]
    assert not (out / "final").exists()
    resumed = subprocess.run(
        [sys.executable, str(RECIPE), *_recipe_argv(shakespeare_on_disk, out, **common, resume_from_checkpoint="latest")],
        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and "checkpoint-0000008" in resumed.stdout
    assert _losses(out) == ref_losses  # identical, every step


def test_two_process_ddp_matches_one_process(tmp_path, shakespeare_data, shakespeare_on_disk):  # noqa: F811
    """Global batch 8: 2 ranks x micro 4 (gloo, torchrun) vs 1 process x micro 4 x accum 2."""
    out = tmp_path / "ddp"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", str(RECIPE),
         *_recipe_argv(shakespeare_on_disk, out, max_steps=6, per_device_train_batch_size=4, block_size=64, save_steps=0)],
        capture_output=True, text=True, env=_env(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1"), cwd=tmp_path, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "micro 4 x accum 1 x 2 proc" in run.stdout
    model_args, data_args, args = make_args(tmp_path, max_steps=6, per_device_train_batch_size=4, gradient_accumulation_steps=2, output_dir=str(tmp_path / "single"))
    single = pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    ddp_losses = _losses(out)
    assert len(ddp_losses) == 6
    for (s1, a), (s2, b) in zip(ddp_losses, single.loss_history):
        assert s1 == s2 and abs(a - b) <= 1e-5 * abs(b), (s1, a, b)
    ddp_val = json.loads((out / "metrics.json").read_text())["val_loss"]
    assert abs(ddp_val - single.metrics["val_loss"]) < 1e-4


def _torchrun(port: int, script: Path, argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), str(script), *argv]


# Runs the recipe, but rank 0 SIGKILLs itself when it starts optimizer step KILL_AT_STEP (a deterministic point
# between two checkpoints, whatever the machine's speed); torchrun then stops the other rank, as after a lost node.
_KILLING_RECIPE = """
import os, runpy, signal, sys
from hfscratch.training import loop
KILL_AT_STEP = int(os.environ["HFSCRATCH_TEST_KILL_AT_STEP"])
train_step = loop.Pretrainer._train_step
def killing_train_step(self, batches):
    if self.step + 1 == KILL_AT_STEP and self.accelerator.is_main_process:
        os.kill(os.getpid(), signal.SIGKILL)
    return train_step(self, batches)
loop.Pretrainer._train_step = killing_train_step
sys.argv = [RECIPE, *sys.argv[1:]]
runpy.run_path(RECIPE, run_name="__main__")
"""


def test_two_process_sigkill_then_resume_reproduces_the_uninterrupted_loss_sequence(tmp_path, shakespeare_on_disk):  # noqa: F811
    """2 ranks (gloo) x micro 4 x accum 2, checkpoints every 5 steps: rank 0 is killed at step 8 (torchrun ends rank 1),
    the run resumes from `latest` (step 5), and its 12 losses and validation loss match an uninterrupted run."""
    common = dict(max_steps=12, save_steps=5, per_device_train_batch_size=4, gradient_accumulation_steps=2, block_size=64, eval_max_batches=2)
    env = _env(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    reference = tmp_path / "reference"
    run = subprocess.run(_torchrun(29541, RECIPE, _recipe_argv(shakespeare_on_disk, reference, **common)), capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    out = tmp_path / "killed"
    killing_recipe = tmp_path / "killing_recipe.py"
    killing_recipe.write_text(f"RECIPE = {str(RECIPE)!r}\n" + _KILLING_RECIPE)
    killed = subprocess.run(_torchrun(29543, killing_recipe, _recipe_argv(shakespeare_on_disk, out, **common)), capture_output=True, text=True,
                            env=_env(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HFSCRATCH_TEST_KILL_AT_STEP="8"), cwd=tmp_path, timeout=300)
    assert killed.returncode != 0 and "Signal 9 (SIGKILL) received" in killed.stderr, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-0000005"] and not (out / "final").exists()
    resumed = subprocess.run(_torchrun(29545, RECIPE, _recipe_argv(shakespeare_on_disk, out, **common, resume_from_checkpoint="latest")),
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "checkpoint-0000005" in resumed.stdout, resumed.stdout[-3000:]
    ref_losses, got = _losses(reference), _losses(out)
    assert [s for s, _ in got] == [s for s, _ in ref_losses] == list(range(1, 13))
    worst = max(abs(a - b) for (_, a), (_, b) in zip(got, ref_losses))
    print(f"2-process resume: max |loss diff| over 12 steps = {worst:.3g}")
    assert worst <= 1e-6, (worst, got, ref_losses)
    ref_val = json.loads((reference / "metrics.json").read_text())["val_loss"]
    assert abs(json.loads((out / "metrics.json").read_text())["val_loss"] - ref_val) <= 1e-6


# Runs the recipe once per bad command line, each in a process forked after the imports (they take most of a run's
# start-up): every case still exits through the recipe's own `sys.exit` with its real exit status and stderr. The
# imports' own stderr (any warning they print) is kept and counts towards each case's stderr, as in a fresh process.
_FORKING_RECIPE = """
import json, os, runpy, sys
imports_err = sys.argv[1] + "/imports.err"
os.dup2(os.open(imports_err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
import hfscratch.cli, hfscratch.training.cli  # what the recipe and its stage import
results = []
for i, argv in enumerate(json.loads(sys.argv[2])):
    err = f"{sys.argv[1]}/case{i}.err"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        sys.argv = [RECIPE, *argv]
        runpy.run_path(RECIPE, run_name="__main__")
        os._exit(0)  # not reached: the recipe ends with sys.exit
    _, status = os.waitpid(pid, 0)
    results.append([os.waitstatus_to_exitcode(status), open(imports_err).read() + open(err).read()])
print(json.dumps(results))
"""


def test_recipe_cli_errors_are_one_line_exit_2(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("max_stepz: 5\n")
    cases = [
        (["--max_stepz", "5"], "did you mean --max_steps"),
        (["--config", str(bad_yaml)], "unknown key 'max_stepz' in"),
        (["--learning_rate", "fast"], "learning_rate"),
    ]
    forking_recipe = tmp_path / "forking_recipe.py"
    forking_recipe.write_text(f"RECIPE = {str(RECIPE)!r}\n" + _FORKING_RECIPE)
    run = subprocess.run([sys.executable, str(forking_recipe), str(tmp_path), json.dumps([argv for argv, _ in cases])],
                         capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120)
    imports_err = tmp_path / "imports.err"  # the driver's own stderr (a failed import lands there)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:] + (imports_err.read_text()[-2000:] if imports_err.exists() else "")
    results = json.loads(run.stdout.splitlines()[-1])
    assert len(results) == len(cases)
    for (argv, expected), (returncode, stderr) in zip(cases, results):
        assert returncode == 2, (argv, stderr)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], (argv, stderr)


def test_default_yaml_matches_dataclass_defaults():
    """A `PretrainConfig()` built in code trains what the recipe's default YAML trains (bar the step budget)."""
    shipped = flat_config(parse_config(PretrainConfig, ["--config", "pretrain_tiny"], prog="test"))
    defaults = flat_config(PretrainConfig())
    assert shipped.keys() == defaults.keys()
    differing = {k: (v, defaults[k]) for k, v in shipped.items() if defaults[k] != v and k != "train.max_steps"}
    assert not differing


@pytest.mark.skipif(not (REPO / "hfscratch" / "data" / "prepare.py").exists(), reason="hfscratch.data.prepare (data issue) not in this tree yet")
def test_default_recipe_end_to_end_tiny(tmp_path):
    from transformers import AutoModelForCausalLM

    run = subprocess.run(
        [sys.executable, str(RECIPE), "--max_steps", "6", "--eval_steps", "0", "--save_steps", "0", "--per_device_train_batch_size", "4",
         "--hidden_size", "64", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--block_size", "64", "--eval_max_batches", "2",
         "--data.output_root", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "bits/byte" in run.stdout and "hfscratch chat" in run.stdout
    AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "final")
    run_config = json.loads((tmp_path / "out" / "run_config.json").read_text())
    assert run_config["train"]["optimizer"] == "adamw"  # the config as run, for the model card and a resume
