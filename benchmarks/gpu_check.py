"""The GPU check: what a CPU cannot show, in one run of a few minutes on one H100/H200, printed as one table.

Rows (each with its target or reference):
1. bf16 MFU at GPT-2-124M shape (block 1024, compiled): steady-state tokens/s x FLOPs/token / the datasheet's dense
   bf16 peak. Goal >= 45 % (OLMo-core reports 39-48 % at 1B-7B, nanoGPT 37 % on A100).
2. FP8 vs bf16 (`mixed_precision: fp8`, torchao float8 linears): tokens/s and mean loss of the last 20 of 200 steps
   of the same run; torchtitan reports +28 % tokens/s for Llama-3.1-8B with float8.
3. flash-attention-2 vs SDPA: max |logit difference| and loss difference on the same weights and batch (skipped
   with the reason when flash-attn is not installed).
4. FSDP2 through Accelerate with one process (`recipes/accelerate/fsdp2.yaml`, `accelerate launch`): the loss
   sequence against a plain run of the same steps.
5. Decoding: new tokens/s of plain `model.generate` (greedy, batch 1) on the row-1 model, lean loop vs
   transformers' own loop.

    bash benchmarks/gpu_check.sh                # on the GPU machine: ~5-8 minutes; writes benchmarks/RESULTS_gpu.md
    bash benchmarks/gpu_check.sh --dry-run      # on CPU: every step at tiny size (the CI check that the script works)
Data: the embedded synthetic GSM8K-style corpus (no download), prepared into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hfscratch.data.config import DataConfig  # noqa: E402
from hfscratch.training import ModelConfig, PretrainConfig, TrainConfig  # noqa: E402
from hfscratch.training.loop import Pretrainer  # noqa: E402


@dataclass
class Sizes:
    """Full size on a GPU; tiny for --dry-run on CPU (the same code path, seconds per step)."""

    preset: str
    block: int
    micro: int
    mfu_steps: int
    fp8_steps: int
    fsdp_steps: int
    new_tokens: int
    problems: int
    compile: bool


FULL = Sizes(preset="gpt2_124m", block=1024, micro=16, mfu_steps=60, fp8_steps=200, fsdp_steps=20, new_tokens=256, problems=20000, compile=True)
DRY = Sizes(preset="tiny", block=64, micro=4, mfu_steps=6, fp8_steps=8, fsdp_steps=3, new_tokens=16, problems=400, compile=False)


class TimedPretrainer(Pretrainer):
    """Records each optimizer step's wall time (the loop's own timer includes nothing else either)."""

    def _train_step(self, batches):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        outcome = super()._train_step(batches)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.step_times = getattr(self, "step_times", []) + [time.perf_counter() - start]
        return outcome


def data_config(workdir: Path, sizes: Sizes) -> DataConfig:
    """The synthetic corpus only (no sources): prepared by the first run, reused by the others (same config hash)."""
    return DataConfig(name="gpu_check", output_root=str(workdir / "data"), synthetic_problems=sizes.problems, vocab_size=2048,
                      block_size=sizes.block, validation_fraction=0.02)


def train(workdir: Path, data: DataConfig, sizes: Sizes, name: str, steps: int, **train_kwargs) -> tuple[Pretrainer, dict]:
    model = ModelConfig(model_size=sizes.preset, max_position_embeddings=max(sizes.block, 64))
    train_config = TrainConfig(output_dir=str(workdir / name), run_name=name, max_steps=steps, per_device_train_batch_size=sizes.micro,
                               optimizer="adamw", learning_rate=6e-4, warmup_steps=max(1, steps // 10), eval_steps=0, eval_max_batches=2, save_steps=0,
                               report_to="none", sample_max_new_tokens=1, spike_zscore=0.0, logging_steps=max(1, steps // 4),
                               torch_compile=sizes.compile, **train_kwargs)
    trainer = TimedPretrainer(PretrainConfig(model, data, train_config))  # prepares the data once, then reuses it
    result = trainer.train()
    steady = trainer.step_times[len(trainer.step_times) // 2:]  # after compilation and warm-up
    tokens_per_second = trainer.plan.tokens_per_step / statistics.median(steady)
    losses = [loss for _, loss in result.loss_history if loss is not None]
    tail = losses[-min(20, len(losses)):]
    return trainer, {"tokens_per_second": tokens_per_second, "final_loss": sum(tail) / len(tail), "losses": losses,
                     "mfu": tokens_per_second * trainer.flops_per_token / trainer.peak_flops if trainer.peak_flops else None,
                     "peak_source": trainer.peak_source}


def attention_parity(trainer: Pretrainer, dry_run: bool) -> str:
    """flash-attention-2 (or, on CPU, eager) against SDPA on the trained weights and one validation batch."""
    model = trainer.unwrapped
    other = "eager" if dry_run else "flash_attention_2"
    if not dry_run:
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            return "skipped: flash-attn is not installed (pip install flash-attn)"
    batch = trainer.val_blocks.get(list(range(min(4, len(trainer.val_blocks)))))
    ids = batch["input_ids"].to(trainer.accelerator.device)
    outputs = {}
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    state = {k: v.to(dtype) for k, v in model.state_dict().items()}
    for implementation in ("sdpa", other):
        copy = type(model)._from_config(model.config, attn_implementation=implementation, dtype=dtype).to(ids.device)
        copy.load_state_dict(state)
        with torch.no_grad():
            out = copy(input_ids=ids, labels=ids)
        outputs[implementation] = (out.logits.float(), out.loss.item())
    diff = (outputs["sdpa"][0] - outputs[other][0]).abs().max().item()
    return f"{other} vs sdpa: max |logit diff| {diff:.2e}, loss {outputs[other][1]:.4f} vs {outputs['sdpa'][1]:.4f}"


def fsdp2_one_process(workdir: Path, data: DataConfig, sizes: Sizes) -> str:
    """`accelerate launch` with the FSDP2 config and one process, against the same steps without it."""
    common = ["--data.output_root", data.output_root, "--data.name", data.name, "--synthetic_problems", str(sizes.problems),
              "--vocab_size", "2048", "--validation_fraction", "0.02", "--block_size", str(sizes.block), "--model_size", sizes.preset,
              "--max_position_embeddings", str(max(sizes.block, 64)), "--max_steps", str(sizes.fsdp_steps), "--per_device_train_batch_size",
              str(sizes.micro), "--optimizer", "adamw", "--learning_rate", "6e-4", "--warmup_steps", "1", "--eval_steps", "0", "--eval_max_batches", "2",
              "--save_steps", "0", "--report_to", "none", "--sample_max_new_tokens", "1", "--spike_zscore", "0", "--logging_steps", "1"]
    losses, engines = {}, {}
    for name, config in (("plain", "single.yaml"), ("fsdp2", "fsdp2.yaml")):
        out = workdir / f"launch-{name}"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "recipes" / "accelerate" / config),
               "--num_processes", "1", str(REPO / "recipes" / "pretrain.py"), *common, "--output_dir", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ, PYTHONPATH=str(REPO)))
        if proc.returncode != 0:
            return f"FAILED ({name}): {(proc.stderr or proc.stdout).strip().splitlines()[-1][:200]}"
        state = json.loads(sorted((out / "checkpoints").glob("checkpoint-*"))[-1].joinpath("trainer_state.json").read_text())
        losses[name] = [loss for _, loss in state["loss_history"]]
        engines[name] = "FSDP2 not applied (needs a GPU)" if "FSDP was requested but" in proc.stdout else "ok"
    worst = max(abs(a - b) / abs(b) for a, b in zip(losses["fsdp2"], losses["plain"]))
    return f"{engines['fsdp2']}; {len(losses['fsdp2'])} steps, max relative loss difference vs plain {worst:.1e}"


def decode_speed(trainer: Pretrainer, new_tokens: int) -> str:
    model = trainer.unwrapped.eval()
    device = trainer.accelerator.device
    ids = trainer.val_blocks.get([0])["input_ids"][:, :16].to(device)
    speeds = {}
    for lean in (True, False):
        model.lean_decoding = lean
        times = []
        for _ in range(3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     do_sample=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        speeds[lean] = (out.shape[1] - ids.shape[1]) / min(times)
    model.lean_decoding = True
    return f"{speeds[True]:,.0f} new tok/s (transformers' loop {speeds[False]:,.0f}: {speeds[True] / speeds[False]:.2f}x)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true", help="CPU, tiny sizes: check every step runs")
    parser.add_argument("--output", default=None, help="Markdown file for the table (default: benchmarks/RESULTS_gpu.md; none on --dry-run)")
    opts = parser.parse_args()
    if not opts.dry_run and not torch.cuda.is_available():
        print("error: no CUDA GPU here; run with --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    sizes = DRY if opts.dry_run else FULL
    device = "CPU (dry run, tiny sizes)" if opts.dry_run else torch.cuda.get_device_name()
    workdir = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    started = time.perf_counter()
    data = data_config(workdir, sizes)
    rows = []
    bf16, bf16_numbers = train(workdir, data, sizes, "bf16-mfu", sizes.mfu_steps, mixed_precision="bf16")
    mfu = f"{bf16_numbers['mfu']:.1%}" if bf16_numbers["mfu"] is not None else "n/a"
    rows.append(("bf16 MFU, " + f"{sizes.preset} block {sizes.block}", f"{bf16_numbers['tokens_per_second']:,.0f} tok/s, MFU {mfu} "
                 f"(peak: {bf16_numbers['peak_source']})", ">= 45 %"))
    numbers = {}
    for precision in ("bf16", "fp8"):
        _, numbers[precision] = train(workdir, data, sizes, f"{precision}-{sizes.fp8_steps}", sizes.fp8_steps, mixed_precision=precision)
    speed = numbers["fp8"]["tokens_per_second"] / numbers["bf16"]["tokens_per_second"]
    rows.append((f"FP8 vs bf16, {sizes.fp8_steps} steps", f"{numbers['fp8']['tokens_per_second']:,.0f} vs {numbers['bf16']['tokens_per_second']:,.0f} tok/s "
                 f"({speed:.2f}x); loss {numbers['fp8']['final_loss']:.4f} vs {numbers['bf16']['final_loss']:.4f}",
                 "torchtitan: 1.28x at 8B; loss within 3 %"))
    rows.append(("attention kernels", attention_parity(bf16, opts.dry_run), "max diff ~1e-2 (bf16)"))
    rows.append(("FSDP2 via Accelerate, 1 process", fsdp2_one_process(workdir, data, sizes), "loss = plain run"))
    rows.append(("decode, batch 1, greedy", decode_speed(bf16, sizes.new_tokens), "lean > transformers' loop"))
    elapsed = time.perf_counter() - started
    table = ["| check | result | target / reference |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows]]
    report = "\n".join([f"# GPU check: {device}", "", f"torch {torch.__version__}; {elapsed / 60:.1f} min in all.", "", *table]) + "\n"
    print(report)
    output = opts.output or (None if opts.dry_run else str(REPO / "benchmarks" / "RESULTS_gpu.md"))
    if output:
        Path(output).write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
