"""The scale options of pretraining, on CPU: FP8 training (torchao's float8 linears, emulated), the Muon optimizer,
the combinations each refuses, and the GPU check's dry run."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors import safe_open

from hfscratch.errors import ConfigError
from hfscratch.training import DataConfig, ModelConfig, PretrainConfig, TrainConfig
from hfscratch.training import checkpoint as ckpt
from hfscratch.training.backend import make_backend, resolve_optimizer
from hfscratch.training.loop import Pretrainer, pretrain
from hfscratch.training.optim import Muon, MuonWithAdamW, build_muon_optimizer, build_scheduler, muon_parameter_split
from tests.test_training_loop import TINY_MODEL, make_args, shakespeare_data, shakespeare_on_disk  # noqa: F401 (fixtures)


def default_model_args(tmp_path, name: str, **training) -> PretrainConfig:
    """The default model (the `tiny` preset of pretrain_tiny.yaml) on the Shakespeare blocks of the loop tests.
    peak_flops is set: these runs check losses and folders, not MFU, and the CPU probe's bf16 matmul takes seconds."""
    train = dict(output_dir=str(tmp_path / name), max_steps=40, per_device_train_batch_size=8, optimizer="adamw", learning_rate=3e-3, warmup_steps=4,
                 eval_steps=0, eval_max_batches=4, logging_steps=10, report_to="none", sample_max_new_tokens=4, spike_zscore=0.0,
                 save_steps=20, peak_flops=1e11)
    train.update(training)
    return PretrainConfig(ModelConfig(), DataConfig(block_size=64), TrainConfig(**train))


def test_fp8_emulated_follows_bf16_and_saves_plain_folders(tmp_path, shakespeare_data):  # noqa: F811
    from transformers import AutoModelForCausalLM

    runs = {}
    for precision in ("bf16", "fp8"):
        trainer = Pretrainer(default_model_args(tmp_path, precision, mixed_precision=precision), data=shakespeare_data)
        result = trainer.train()
        linears = [type(m).__name__ for n, m in trainer.unwrapped.named_modules() if "proj" in n or n.endswith("lm_head")]
        runs[precision] = (result, linears, type(trainer.unwrapped.lm_head).__name__)
    (bf16, bf16_layers, _), (fp8, fp8_layers, fp8_head) = runs["bf16"], runs["fp8"]
    # Every projection inside the blocks (4 layers x q, k, v, o, gate, up, down) ran float8; the head did not.
    assert fp8_layers.count("Float8Linear") == 28 and fp8_head == "Linear" and "Float8Linear" not in bf16_layers
    losses = {name: [loss for _, loss in r.loss_history] for name, r in (("bf16", bf16), ("fp8", fp8))}
    assert len(losses["fp8"]) == 40 and losses["fp8"] != losses["bf16"]  # another numeric path, not the same run
    # The loss as the run logs it (means over its 10-step logging windows) stays within 3 % of bf16's all the way.
    windows = {name: [sum(values[i : i + 10]) / 10 for i in range(0, 40, 10)] for name, values in losses.items()}
    worst = max(abs(a - b) / b for a, b in zip(windows["fp8"], windows["bf16"]))
    assert worst < 0.03, f"fp8 loss left bf16's by {worst:.1%}: {windows}"
    assert losses["fp8"][-1] < losses["fp8"][0] - 1.0
    assert abs(fp8.metrics["val_loss"] - bf16.metrics["val_loss"]) / bf16.metrics["val_loss"] < 0.03
    # The final folder and the checkpoints' HF folders are plain: the bf16 run's tensor names and dtypes, no torchao.
    for folder in (fp8.final_dir, ckpt.list_checkpoints(tmp_path / "fp8")[0] / "hf"):
        with safe_open(folder / "model.safetensors", "pt") as f, safe_open(bf16.final_dir / "model.safetensors", "pt") as ref:
            names = list(f.keys())
            assert sorted(names) == sorted(ref.keys())
            assert {f.get_slice(k).get_dtype() for k in names} == {"F32"}
        config = (folder / "config.json").read_text()
        assert "float8" not in config.lower() and "torchao" not in config.lower()
    model = AutoModelForCausalLM.from_pretrained(fp8.final_dir)
    assert {type(m) for n, m in model.named_modules() if n.endswith("proj")} == {torch.nn.Linear}
    recorded = json.loads((fp8.final_dir / "training_metrics.json").read_text())
    assert recorded["metrics"]["val_loss"] == pytest.approx(fp8.metrics["val_loss"]) and recorded["loss_history"][-1][1] == losses["fp8"][-1]


def test_fp8_and_muon_refuse_what_they_cannot_do(tmp_path, shakespeare_data):  # noqa: F811
    with pytest.raises(ConfigError, match="fp8 needs FP8 hardware.*set fp8_emulate true"):
        pretrain(default_model_args(tmp_path, "x", mixed_precision="fp8", fp8_emulate=False), data=shakespeare_data)
    assert not (tmp_path / "x" / "final").exists()
    with pytest.raises(ConfigError, match="fp8_emulate applies to mixed_precision fp8 only"):
        TrainConfig(mixed_precision="bf16", fp8_emulate=True)
    with pytest.raises(ConfigError, match="optimizer must be auto, adamw or muon"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ConfigError, match="muon_momentum must be in"):
        TrainConfig(optimizer="muon", muon_momentum=1.0)
    for engine, settings, message in (
        (DistributedType.DEEPSPEED, dict(mixed_precision="fp8"), "fp8 is not supported with DeepSpeed"),
        (DistributedType.DEEPSPEED, dict(optimizer="muon"), "muon runs on one process or DDP, not DEEPSPEED"),
        (DistributedType.FSDP, dict(optimizer="muon"), "muon runs on one process or DDP, not FSDP"),
    ):
        with pytest.raises(ConfigError, match=message):
            make_backend(SimpleNamespace(distributed_type=engine), TrainConfig(**settings))
    for settings, message in ((dict(optimizer="muon"), "tp_size 2 does not combine with optimizer muon; use optimizer adamw"),
                              (dict(mixed_precision="fp8"), "does not combine with mixed_precision fp8"),
                              (dict(eval_harness_tasks=["arc_easy"], eval_harness_steps=10), "set eval_harness_steps 0"),
                              (dict(tp_size=0), "tp_size must be >= 1")):
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**{"tp_size": 2, **settings})
    written = tmp_path / "checkpoint-0000005"
    written.mkdir()
    (written / ckpt.TRAINER_STATE).write_text(json.dumps({"step": 5, "tp_size": 2}))
    with pytest.raises(ckpt.CheckpointError, match="written with tp_size 2 and this run has tp_size 1; resume with --tp_size 2"):
        ckpt.load_checkpoint(SimpleNamespace(args=TrainConfig()), written)
    for engine, processes, message in ((DistributedType.MULTI_CPU, 3, "tp_size 2 must divide the number of processes, this launch has 3"),
                                       (DistributedType.NO, 1, "must divide the number of processes, this launch has 1"),
                                       (DistributedType.DEEPSPEED, 2, "not DEEPSPEED")):
        with pytest.raises(ConfigError, match=message):
            make_backend(SimpleNamespace(distributed_type=engine, num_processes=processes), TrainConfig(tp_size=2))


def test_auto_optimizer_is_muon_where_ranks_hold_whole_matrices():
    """`optimizer: auto`: Muon on one process and DDP, AdamW where the engine hands ranks matrix slices."""
    for engine, settings, expected in ((DistributedType.NO, {}, "muon"), (DistributedType.MULTI_CPU, {}, "muon"),
                                       (DistributedType.MULTI_GPU, {}, "muon"), (DistributedType.DEEPSPEED, {}, "adamw"),
                                       (DistributedType.FSDP, {}, "adamw"), (DistributedType.MULTI_CPU, {"tp_size": 2}, "adamw"),
                                       (DistributedType.NO, {"optimizer": "adamw"}, "adamw"),
                                       (DistributedType.MULTI_CPU, {"optimizer": "muon"}, "muon")):
        assert resolve_optimizer(TrainConfig(**{"optimizer": "auto", **settings}), engine).optimizer == expected, (engine, settings)
    # ZeRO under `auto` builds its backend instead of refusing Muon.
    backend = make_backend(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED), TrainConfig(optimizer="auto"))
    assert backend.args.optimizer == "adamw"


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(tiny_tokenizer):
    from hfscratch import HfscratchConfig, HfscratchForCausalLM
    from tests.helpers import tiny_config

    for tied in (False, True):
        model = HfscratchForCausalLM(HfscratchConfig(**{**tiny_config(tiny_tokenizer).to_diff_dict(), "tie_word_embeddings": tied}))
        names = {id(p): n for n, p in model.named_parameters()}
        hidden, vocab, vectors = muon_parameter_split(model)
        assert {names[id(p)].split(".")[-2] for p in hidden} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        assert {names[id(p)] for p in vocab} == ({"model.embed_tokens.weight"} if tied else {"model.embed_tokens.weight", "lm_head.weight"})
        assert all(p.ndim == 1 and "norm" in names[id(p)] for p in vectors)
        assert len(hidden) + len(vocab) + len(vectors) == len(list(model.parameters()))  # each once (tied counted once)


@pytest.mark.parametrize("adjust_lr_fn", ["original", "match_rms_adamw"])
def test_cpu_muon_step_matches_torch_muon(adjust_lr_fn):
    """hfscratch's CPU Muon (Newton-Schulz in fp32) takes torch.optim.Muon's steps, up to torch's bf16 rounding."""
    torch.manual_seed(0)
    ours, reference = torch.nn.Parameter(torch.randn(96, 64)), torch.nn.Parameter(torch.empty(96, 64))
    reference.data.copy_(ours.data)
    optimizers = [Muon([ours], lr=0.02, adjust_lr_fn=adjust_lr_fn), torch.optim.Muon([reference], lr=0.02, adjust_lr_fn=adjust_lr_fn)]
    start = ours.detach().clone()
    for _ in range(3):
        grad = torch.randn(96, 64)
        for param, optimizer in zip((ours, reference), optimizers):
            param.grad = grad.clone()
            optimizer.step()
    moved = (reference.detach() - start).abs().mean()
    assert (ours.detach() - reference.detach()).abs().mean() < 0.01 * moved  # bf16 vs fp32 orthogonalisation only
    assert optimizers[0].state_dict()["state"][0].keys() == optimizers[1].state_dict()["state"][0].keys()


def test_muon_optimizer_state_round_trips_and_the_schedule_reaches_both_parts():
    torch.manual_seed(0)

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Embedding(32, 16), torch.nn.Linear(16, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 32))
        model.get_output_embeddings = lambda: model[3]
        return model, build_muon_optimizer(model, 1e-2, 0.1)

    def train(model, opt, steps, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            x = torch.randint(0, 32, (8, 5), generator=g)
            torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
            opt.step()
            opt.zero_grad()

    model, opt = make()
    assert isinstance(opt.muon, torch.optim.Muon) and isinstance(opt.adamw, torch.optim.AdamW)
    assert [len(g["params"]) for g in opt.param_groups] == [1, 2, 4]  # hidden | embedding + head | LayerNorm + biases
    schedule = build_scheduler(opt, max_steps=10, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    assert opt.muon.param_groups[0]["lr"] == opt.adamw.param_groups[0]["lr"] == pytest.approx(5e-3)  # warmup 1/2
    train(model, opt, 3, seed=1)
    schedule.step()
    saved = opt.state_dict()
    assert set(saved["state"]) == set(range(7)) and "momentum_buffer" in saved["state"][0] and "exp_avg" in saved["state"][1]
    twin, twin_opt = make()
    twin.load_state_dict(model.state_dict())
    twin_opt.load_state_dict(copy.deepcopy(saved))  # as from disk: load_state_dict keeps the given tensors
    assert isinstance(twin_opt, MuonWithAdamW) and twin_opt.muon.state is twin_opt.state
    assert twin_opt.muon.param_groups[0] is twin_opt.param_groups[0]  # the inner optimizers see the loaded groups
    train(model, opt, 2, seed=2)
    train(twin, twin_opt, 2, seed=2)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_muon_trains_and_resumes_exactly(tmp_path, shakespeare_data):  # noqa: F811
    model_args, data_args, args = make_args(tmp_path, max_steps=8, save_steps=4, optimizer="muon", learning_rate=1e-2)
    whole = pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    losses = [loss for _, loss in whole.loss_history]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.5, losses
    # Resume a second run from the first run's step-4 checkpoint: Muon's momenta and AdamW's moments come back.
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run" / "checkpoints" / "checkpoint-0000004", resumed_dir / "checkpoints" / "checkpoint-0000004")
    model_args, data_args, args = make_args(tmp_path, max_steps=8, save_steps=4, optimizer="muon", learning_rate=1e-2, output_dir=str(resumed_dir),
                                            resume_from_checkpoint="latest")
    resumed = pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    assert [loss for _, loss in resumed.loss_history] == losses
    # Its optimizer state is Muon's: resuming it as AdamW is refused in one line, before anything is loaded.
    as_adamw = tmp_path / "as-adamw"
    shutil.copytree(tmp_path / "run" / "checkpoints" / "checkpoint-0000004", as_adamw / "checkpoints" / "checkpoint-0000004")
    model_args, data_args, args = make_args(tmp_path, max_steps=8, save_steps=4, optimizer="adamw", learning_rate=1e-2,
                                            output_dir=str(as_adamw), resume_from_checkpoint="latest")
    with pytest.raises(ckpt.CheckpointError, match="holds muon optimizer state and this run uses adamw; resume with --optimizer muon"):
        pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    assert resumed.metrics["val_loss"] == pytest.approx(whole.metrics["val_loss"], abs=1e-6)


def test_gpu_check_dry_run_runs_every_step(tmp_path):
    """`benchmarks/gpu_check.sh --dry-run`: each row of the GPU check at tiny size on CPU, one table, exit 0."""
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path))
    proc = subprocess.run(["bash", str(repo / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("| check |"):]
    for row in ("bf16 MFU", "FP8 vs bf16", "attention kernels", "FSDP2 via Accelerate", "decode, batch 1"):
        assert f"| {row}" in table, table
    assert "FAILED" not in table and "eager vs sdpa: max |logit diff|" in table
    assert "FSDP2 not applied (needs a GPU); 3 steps, max relative loss difference vs plain 0.0e+00" in table
    assert not (repo / "benchmarks" / "RESULTS_gpu.md").exists() or "dry run" not in (repo / "benchmarks" / "RESULTS_gpu.md").read_text()


def test_tensor_parallel_follows_one_process_resumes_and_saves_unsharded(tmp_path, shakespeare_data, shakespeare_on_disk):  # noqa: F811
    """`--tp_size 2` on 2 CPU processes (gloo, DTensor; with activation checkpointing, which must not change the math):
    10 steps of the same batches as one process, losses within 1e-3; a resume from its step-5 checkpoint repeats steps
    6-10; its folders load unsharded with from_pretrained. Then 4 processes: 2 TP groups, data parallel by FSDP2."""
    from transformers import AutoModelForCausalLM

    from tests.test_training_dist import REPO, _env, _losses, _recipe_argv, _torchrun

    common = dict(max_steps=10, save_steps=5, per_device_train_batch_size=8, block_size=64, keep_last_k=2)
    model_args, data_args, args = make_args(tmp_path, **{k: v for k, v in common.items() if k != "block_size"}, output_dir=str(tmp_path / "one"))
    single = pretrain(PretrainConfig(model_args, data_args, args), data=shakespeare_data)
    env = _env(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    recipe = REPO / "recipes" / "pretrain.py"
    tp_out = tmp_path / "tp"
    run = subprocess.run(_torchrun(29551, recipe, _recipe_argv(shakespeare_on_disk, tp_out, tp_size=2, gradient_checkpointing=True, **common)),
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "micro 8 x accum 1 x 1 proc" in run.stdout  # one data-parallel replica: both ranks read the same batches
    tp_losses = _losses(tp_out)
    worst = max(abs(a - b) for (_, a), (_, b) in zip(tp_losses, single.loss_history))
    print(f"TP 2 vs 1 process: max |loss diff| over 10 steps = {worst:.2e}")
    assert [s for s, _ in tp_losses] == list(range(1, 11)) and worst <= 1e-3, (tp_losses, single.loss_history)
    tp_val = json.loads((tp_out / "metrics.json").read_text())["val_loss"]
    assert abs(tp_val - single.metrics["val_loss"]) <= 1e-3, (tp_val, single.metrics)

    # Two TP groups of 2, data parallel through FSDP2 (4 processes): micro 4 per group = the same 8-sequence steps.
    dp_out = tmp_path / "tp-dp"
    dp_argv = _recipe_argv(shakespeare_on_disk, dp_out, tp_size=2, **{**common, "per_device_train_batch_size": 4, "save_steps": 0})
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4", "--master_port", "29555", str(recipe), *dp_argv],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0 and "warn" not in (run.stdout + run.stderr).lower(), run.stdout[-3000:] + run.stderr[-3000:]
    assert "micro 4 x accum 1 x 2 proc" in run.stdout
    worst_dp = max(abs(a - b) for (_, a), (_, b) in zip(_losses(dp_out), single.loss_history))
    print(f"TP 2 x FSDP2 2 vs 1 process: max |loss diff| over 10 steps = {worst_dp:.2e}")
    assert len(_losses(dp_out)) == 10 and worst_dp <= 1e-3, (_losses(dp_out), single.loss_history)

    checkpoint = tp_out / "checkpoints" / "checkpoint-0000005"
    assert (checkpoint / "tp_state" / ".metadata").is_file()  # torch.distributed.checkpoint, one shard file per rank
    resumed_out = tmp_path / "tp-resumed"
    resumed = subprocess.run(_torchrun(29553, recipe, _recipe_argv(shakespeare_on_disk, resumed_out, tp_size=2, resume_from_checkpoint=checkpoint, **common)),
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    again = _losses(resumed_out)
    assert again[:5] == tp_losses[:5] and max(abs(a - b) for (_, a), (_, b) in zip(again[5:], tp_losses[5:])) <= 1e-6, (again, tp_losses)

    # Plain folders: one process loads them without any distributed setup, and they hold the trained weights.
    reference = AutoModelForCausalLM.from_pretrained(single.final_dir)
    for folder in (tp_out / "final", checkpoint / "hf"):
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert not any(type(p).__name__ == "DTensor" for p in model.parameters())
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    gap = max((a - b).abs().max().item() for a, b in zip(model.state_dict().values(), AutoModelForCausalLM.from_pretrained(tp_out / "final").state_dict().values()))
    assert gap > 0  # the step-5 checkpoint is not the final model
    for folder in (tp_out / "final", dp_out / "final"):
        final = AutoModelForCausalLM.from_pretrained(folder).state_dict()
        worst_weight = max((final[k] - v).abs().max().item() for k, v in reference.state_dict().items())
        assert worst_weight <= 1e-3, (folder, worst_weight)
