"""The wheel is complete: a regular (non-editable) install runs the stages with their shipped defaults from an empty
folder, away from the checkout's recipes/ and eval/ (default configs, lm-eval task YAMLs and metric modules ship
as package data), and the hints it prints name commands that user has."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    """Build the wheel (offline: no build isolation) and unpack it as an installed package, without dependencies."""
    dist = tmp_path_factory.mktemp("dist")
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources it builds.
    source = tmp_path_factory.mktemp("source") / "hfscratch"
    top_level_skips = {".git", ".venv", ".venv-latest", ".venv-lock", ".cache", "outputs", "data", "build", "runs"}

    def skip(folder, names):
        return [n for n in names if n == "__pycache__" or n.endswith(".egg-info")
                or (Path(folder) == REPO and n in top_level_skips)]

    shutil.copytree(REPO, source, symlinks=True, ignore=skip)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(dist), str(source)], check=True, timeout=300, cwd=dist)
    (wheel,) = dist.glob("hfscratch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("hfscratch/configs/pretrain_tiny.yaml", "hfscratch/configs/sft_synthetic_math.yaml",
                    "hfscratch/evaluation/lm_eval_tasks/gsm8k_local.yaml", "hfscratch/evaluation/lm_eval_tasks/utils.py",
                    "hfscratch/evaluation/metrics/bits_per_byte/bits_per_byte.py", "hfscratch/tokenizer.py",
                    "hfscratch/data/synthetic_math_themes.yaml", "hfscratch/model_card.jinja"):
        assert shipped in names, f"{shipped} missing from {wheel.name}"
    assert not any(n.startswith(("tests/", "recipes/", "eval/")) for n in names)
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--disable-pip-version-check", "--target", str(site), str(wheel)], check=True, timeout=300)
    return site


def run_cli(site: Path, cwd: Path, *argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    # PYTHONPATH puts the unpacked wheel ahead of the checkout's editable install; the dependencies come from the
    # test environment. conftest's DS_ACCELERATOR is removed, as a user has none: the run itself must keep DeepSpeed's
    # accelerator probe (imported through Accelerate) from printing its warning.
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONWARNINGS="default")
    return subprocess.run([sys.executable, "-m", "hfscratch.cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_installed_wheel_runs_the_stages_from_an_empty_folder(wheel_site, tmp_path, shared_data):
    # Where `import hfscratch` resolves, found without running the package (its torch/transformers imports take seconds;
    # the commands below import it from there for real).
    where = subprocess.run([sys.executable, "-c", "import importlib.util; print(importlib.util.find_spec('hfscratch').origin)"],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(wheel_site)}, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(wheel_site)), where.stdout

    # pretrain with the shipped default config (it prepares the embedded data first), a few steps only
    proc = run_cli(wheel_site, tmp_path, "pretrain", "--max_steps", "4", "--eval_steps", "2", "--save_steps", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = tmp_path / "outputs" / "pretrain-tiny" / "final"
    assert (final / "model.safetensors").is_file() and (final / "modeling_hfscratch.py").is_file()
    next_commands = proc.stdout[proc.stdout.index("next:"):]
    assert "recipes/" not in next_commands and "hfscratch sft" in next_commands, next_commands
    assert "WARNING" not in proc.stdout + proc.stderr and "Warning:" not in proc.stderr, proc.stderr[-2000:]

    # eval with a shipped local task (YAML + utils.py from the wheel) on the shared GSM8K copy
    proc = run_cli(wheel_site, tmp_path, "eval", str(final), "--tasks", "gsm8k_local", "--limit", "3",
                   "--num_fewshot", "0", "--data_dir", str(shared_data), "--max_gen_toks", "16", "--output_dir", str(tmp_path / "eval"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "eval" / "results.json").is_file()

    # one-shot chat and export to a stock Llama folder
    proc = run_cli(wheel_site, tmp_path, "chat", str(final), "--prompt", "How many apples?", "--temperature", "0",
                   "--max-new-tokens", "8")
    assert proc.returncode == 0 and proc.stdout, proc.stderr[-3000:]  # a 4-step model may well reply in newlines
    proc = run_cli(wheel_site, tmp_path, "export", str(final), str(tmp_path / "llama"), "--to", "llama")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "llama" / "config.json").is_file()

    # a shipped config by name, from a folder that has no recipes/configs
    proc = run_cli(wheel_site, tmp_path, "data", "--config", "recipes/configs/no_such_config.yaml")
    assert proc.returncode == 2 and "pretrain_tiny" in proc.stderr and "Traceback" not in proc.stderr
