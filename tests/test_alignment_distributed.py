"""Each alignment recipe runs with 2 CPU processes (DDP over gloo via torchrun), as a user would launch it:
`ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 recipes/<stage>.py ...`. Checks the run really had two ranks,
changed the weights, and left a folder that loads with AutoModelForCausalLM."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.alignment_setup import pretrained_base

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--synthetic_train_size", "64", "--synthetic.max_value", "10", "--synthetic.operations", "+", "-",
          "--max_steps", "2", "--eval_samples", "0", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1"]
STAGE_ARGS = {
    "sft": ["--per_device_train_batch_size", "4", "--learning_rate", "1e-3"],
    "dpo": ["--per_device_train_batch_size", "4", "--learning_rate", "1e-4", "--max_length", "256"],
    # 2 ranks x 8 completions = 4 prompts x 4 samples per step
    "grpo": ["--per_device_train_batch_size", "8", "--num_generations", "4", "--max_completion_length", "48",
             "--learning_rate", "1e-4", "--eval_num_samples", "0"],
}


@pytest.mark.parametrize("stage", ["sft", "dpo", "grpo"])
def test_recipe_runs_on_two_cpu_processes(stage, tmp_path):
    base = pretrained_base()
    out = tmp_path / stage
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "recipes" / f"{stage}.py"), "--model_name_or_path", str(base), "--output_dir", str(out),
           *COMMON, *STAGE_ARGS[stage]]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((out / "alignment_results.json").read_text())
    assert results["world_size"] == 2
    assert results["train_loss"] and all(math.isfinite(v) for v in results["train_loss"])
    trained = load_file(out / "final" / "model.safetensors")
    start = load_file(base / "model.safetensors")
    assert set(start) == set(trained)
    assert any(not torch.equal(trained[k], start[k]) for k in start), "2-process training left the weights unchanged"

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert type(model).__name__ == "HfscratchForCausalLM"
