"""DeepSpeed ZeRO-2 / ZeRO-3 through `accelerate launch` on CPU (2 processes, gloo, fp32, no compiled ops).

Each stage: the recipe with the shipped accelerate config trains 6 steps (micro 4 x accum 2 x 2 ranks) and
must reproduce the loss sequence and final weights of one process with the same global batch; the step-3
ZeRO checkpoint (sharded optimizer states) resumes to the same losses; the final folder loads with
AutoModelForCausalLM (ZeRO-3: gathered from the shards). Needs `pip install deepspeed`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed", reason="DeepSpeed tests need `pip install deepspeed` (in the dev extra)")

from hfscratch.training import PretrainConfig, pretrain  # noqa: E402
from tests.test_training_dist import _env, _losses, _recipe_argv  # noqa: E402
from tests.test_training_loop import make_args, shakespeare_data, shakespeare_on_disk  # noqa: E402,F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "pretrain.py"
RUN = dict(max_steps=6, save_steps=3, per_device_train_batch_size=4, gradient_accumulation_steps=2, block_size=64, eval_max_batches=2)
LOSS_TOLERANCE = 1e-5  # fp32; ZeRO reduces gradients in another order than one process (measured: <= 2e-6)


def _deepspeed_env() -> dict:
    env = _env(OMP_NUM_THREADS="1")
    env.pop("ACCELERATE_USE_CPU", None)  # with it, Accelerate drops DeepSpeed (the recipe then warns)
    return env


def _launch(stage: int, port: int, output_dir: Path, data_root: Path, cwd: Path, **extra) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "recipes" / "accelerate" / f"zero{stage}.yaml"),
        "--num_processes", "2", "--main_process_port", str(port), str(RECIPE), *_recipe_argv(data_root, output_dir, **RUN, **extra),
    ]
    run = subprocess.run(command, capture_output=True, text=True, env=_deepspeed_env(), cwd=cwd, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, shakespeare_data):  # noqa: F811
    """The reference: 1 process x micro 4 x accum 4 = the same 16 sequences per step."""
    out = tmp_path_factory.mktemp("single")
    training = {k: v for k, v in RUN.items() if k != "block_size"}  # make_args packs 64-token blocks already
    model_args, data_args, args = make_args(out, **{**training, "gradient_accumulation_steps": 4, "output_dir": str(out / "run")})
    return pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)


@pytest.mark.parametrize("stage,port", [(2, 29561), (3, 29565)])
def test_zero_matches_one_process_and_resumes(stage, port, tmp_path, one_process, shakespeare_on_disk):  # noqa: F811
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / f"zero{stage}"
    run = _launch(stage, port, out, shakespeare_on_disk, tmp_path)
    assert "DeepSpeed was requested" not in run.stdout, run.stdout[-2000:]  # it really ran DeepSpeed, no fallback
    assert "micro 4 x accum 2 x 2 proc" in run.stdout
    assert "built successfully" not in run.stdout + run.stderr  # no DeepSpeed op was compiled
    shards = sorted(p.name for p in (out / "checkpoints" / "checkpoint-0000003" / "pytorch_model").iterdir())
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt" in shards and "zero_pp_rank_1_mp_rank_00_optim_states.pt" in shards, shards

    losses = _losses(out)
    assert [s for s, _ in losses] == [s for s, _ in one_process.loss_history] == list(range(1, 7))
    worst = max(abs(a - b) for (_, a), (_, b) in zip(losses, one_process.loss_history))
    print(f"ZeRO-{stage} vs 1 process: max |loss diff| over 6 steps = {worst:.3g}")
    assert worst <= LOSS_TOLERANCE, (worst, losses, one_process.loss_history)
    val = json.loads((out / "metrics.json").read_text())["val_loss"]
    assert abs(val - one_process.metrics["val_loss"]) <= LOSS_TOLERANCE

    # The final folder: full (gathered) fp32 weights equal to the one-process run's, and it loads.
    mine, reference = load_file(out / "final" / "model.safetensors"), load_file(one_process.final_dir / "model.safetensors")
    assert mine.keys() == reference.keys()
    weight_diff = max((mine[k] - reference[k]).abs().max().item() for k in mine)
    assert weight_diff <= 1e-4, weight_diff
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.config.num_hidden_layers == 2 and all(torch.isfinite(p).all() for p in model.parameters())
    AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "checkpoint-0000003" / "hf")

    # Resume from the ZeRO checkpoint of step 3 (as after a crash during steps 4-6).
    uninterrupted = losses
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoints" / "checkpoint-0000006")
    (out / "metrics.json").unlink()
    resumed = _launch(stage, port + 2, out, shakespeare_on_disk, tmp_path, resume_from_checkpoint="latest")
    assert "resumed from" in resumed.stdout and "checkpoint-0000003" in resumed.stdout, resumed.stdout[-2000:]
    again = _losses(out)
    assert [s for s, _ in again] == list(range(1, 7))
    resume_diff = max(abs(a - b) for (_, a), (_, b) in zip(again, uninterrupted))
    print(f"ZeRO-{stage} resumed at step 3 vs uninterrupted: max |loss diff| = {resume_diff:.3g}")
    assert resume_diff <= 1e-6, (again, uninterrupted)
    assert os.path.isfile(out / "final" / "model.safetensors")
