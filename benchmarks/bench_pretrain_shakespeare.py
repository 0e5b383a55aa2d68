"""Time-to-quality on TinyShakespeare: hfscratch pretraining vs nanoGPT's documented CPU recipe.

nanoGPT's README CPU recipe (shakespeare_char): a char-level GPT with 4 layers, 4 heads, 128 dims, block 64,
batch 12, 2000 iterations, lr 1e-3 cosine to 1e-4 (warmup 100), AdamW betas (0.9, 0.99), dropout 0, grad clip
1, reaching val loss ~1.88 nats/char (= 2.71 bits/byte: the text is ASCII, one byte per char). Here that recipe
is a minimal char-level torch loop written in this file (same hyper-parameters, same process, same machine);
hfscratch runs its real `Pretrainer` (BPE tokenizer, Llama-style model, packed documents) on the same split:
the last 10% of input.txt held out. Quality is validation **bits per byte** (tokenizer independent).

Reports: (1) bpb vs training wall time for both (eval time excluded), time to reach 2.72 bpb, final bpb at
equal time; (2) loop overhead: hfscratch step time vs a bare forward/backward/clip/AdamW step of the same
model on the same batches; (3) 2-process (torchrun, gloo) tokens/s vs 1 process.

    .venv/bin/python benchmarks/bench_pretrain_shakespeare.py            # full (~15-25 min on 2 cores)
    .venv/bin/python benchmarks/bench_pretrain_shakespeare.py --quick    # a few minutes, shorter runs
Results go to stdout and benchmarks/RESULTS_pretrain.md (+ a PNG beside it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TARGET_BPB = 2.72

# ---------------------------------------------------------------------------------------------- nanoGPT recipe


class CharGPT(nn.Module):
    """GPT-2 block structure (LayerNorm, GELU MLP, learned positions, tied head), as nanoGPT's model."""

    def __init__(self, vocab: int, n_layer=4, n_head=4, n_embd=128, block=64):
        super().__init__()
        self.tok = nn.Embedding(vocab, n_embd)
        self.pos = nn.Embedding(block, n_embd)
        self.blocks = nn.ModuleList(nn.ModuleDict(dict(
            ln1=nn.LayerNorm(n_embd), qkv=nn.Linear(n_embd, 3 * n_embd), proj=nn.Linear(n_embd, n_embd),
            ln2=nn.LayerNorm(n_embd), up=nn.Linear(n_embd, 4 * n_embd), down=nn.Linear(4 * n_embd, n_embd),
        )) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab, bias=False)
        self.head.weight = self.tok.weight
        self.n_head = n_head
        for name, p in self.named_parameters():
            if p.ndim == 2:
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer) if name.endswith(("proj.weight", "down.weight")) else 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx):
        b, t = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(t))
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["ln1"](x)).split(x.shape[-1], dim=-1)
            q, k, v = (z.view(b, t, self.n_head, -1).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
            x = x + blk["proj"](y)
            x = x + blk["down"](F.gelu(blk["up"](blk["ln2"](x))))
        return self.head(self.ln_f(x))


def run_nanogpt_recipe(text: str, iters: int, eval_every: int, seed: int = 1337) -> dict:
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(data))
    train, val = data[:n], data[n:]
    torch.manual_seed(seed)
    block, batch = 64, 12
    model = CharGPT(len(chars))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.99))

    def lr_at(it):  # nanoGPT: warmup 100, cosine to min_lr 1e-4 at lr_decay_iters (= max_iters)
        if it < 100:
            return 1e-3 * (it + 1) / 101
        ratio = min(1.0, (it - 100) / max(1, iters - 100))
        return 1e-4 + 0.5 * (1 + math.cos(math.pi * ratio)) * (1e-3 - 1e-4)

    # Fixed validation windows (non-overlapping, first 200 x 12) so every evaluation sees the same text.
    starts = torch.arange(0, len(val) - block - 1, block)[: 200 * batch]
    val_x = torch.stack([val[s : s + block] for s in starts])
    val_y = torch.stack([val[s + 1 : s + 1 + block] for s in starts])

    @torch.no_grad()
    def evaluate():
        model.eval()
        total = 0.0
        for i in range(0, len(val_x), 64):
            logits = model(val_x[i : i + 64])
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), val_y[i : i + 64].reshape(-1), reduction="sum").item()
        model.train()
        return total / val_y.numel()

    curve, train_time = [], 0.0
    g = torch.Generator().manual_seed(seed)
    for it in range(iters):
        start = time.perf_counter()
        ix = torch.randint(len(train) - block - 1, (batch,), generator=g)
        x = torch.stack([train[i : i + block] for i in ix])
        y = torch.stack([train[i + 1 : i + 1 + block] for i in ix])
        for group in opt.param_groups:
            group["lr"] = lr_at(it)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        train_time += time.perf_counter() - start
        if (it + 1) % eval_every == 0 or it + 1 == iters:
            nats = evaluate()
            curve.append((train_time, nats / math.log(2)))  # ASCII: 1 char = 1 byte
    return {"curve": curve, "train_time": train_time, "final_bpb": curve[-1][1], "iters": iters}


# ---------------------------------------------------------------------------------------------- hfscratch


def pack_text_documents(documents: list[str], tokenizer, block_size: int):
    from datasets import Dataset

    ids, pos = [], []
    for doc in documents:
        tokens = [tokenizer.bos_token_id] + tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids += tokens
        pos += list(range(len(tokens)))
    n = len(ids) // block_size
    return Dataset.from_dict({"input_ids": [ids[i * block_size : (i + 1) * block_size] for i in range(n)],
                              "position_ids": [pos[i * block_size : (i + 1) * block_size] for i in range(n)]})


HFSCRATCH_CONFIGS = {
    # A Llama-style model (RoPE, RMSNorm, SwiGLU) on a 1024-token BPE: 4x fewer positions per byte than chars.
    "hfscratch-llama-tiny": dict(
        model=dict(model_size="tiny", hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256),
        block_size=128, vocab=1024,
        training=dict(per_device_train_batch_size=16, optimizer="adamw", learning_rate=3e-3, warmup_steps=50, lr_schedule="cosine", min_lr_ratio=0.1),
    ),
}
# The same model, data and schedule with `optimizer: muon` (Muon on the hidden matrices, AdamW on the rest) at its
# best peak LR of a 200-step sweep (3e-3: 2.72 bpb at 21.7 s, 1e-2: 18.6 s, 2e-2: 22.7 s; `--learning_rates` reruns it).
HFSCRATCH_CONFIGS["hfscratch-llama-tiny-muon"] = dict(
    HFSCRATCH_CONFIGS["hfscratch-llama-tiny"],
    training=dict(HFSCRATCH_CONFIGS["hfscratch-llama-tiny"]["training"], optimizer="muon", learning_rate=1e-2),
)


def run_hfscratch(text: str, name: str, steps: int, eval_every: int, workdir: Path) -> dict:
    from hfscratch.tokenizer import train_tokenizer
    from hfscratch.training import DataConfig, ModelConfig, PretrainConfig, TrainConfig, TrainingData
    from hfscratch.training.loop import Pretrainer

    cfg = HFSCRATCH_CONFIGS[name]
    n = int(0.9 * len(text))
    train_text, val_text = text[:n], text[n:]
    tok = train_tokenizer([d for d in train_text.split("\n\n") if d.strip()], cfg["vocab"], output_dir=workdir / f"tok-{name}", show_progress=False)
    train = pack_text_documents([d for d in train_text.split("\n\n") if d.strip()], tok, cfg["block_size"])
    val = pack_text_documents([d for d in val_text.split("\n\n") if d.strip()], tok, cfg["block_size"])
    curve = []

    class TimedPretrainer(Pretrainer):
        def _run_eval(self, pbar):
            metrics = self.evaluate()
            self.last_eval = metrics
            self.validation_history.append((self.step, metrics["eval/loss"]))
            curve.append((self.train_time, metrics["eval/bits_per_byte"]))

    training = dict(
        output_dir=str(workdir / name), max_steps=steps, eval_steps=eval_every, eval_max_batches=None, save_steps=0, report_to="none",
        logging_steps=50, sample_max_new_tokens=1, spike_zscore=0.0, overwrite_output_dir=True, **cfg["training"],
    )
    config = PretrainConfig(ModelConfig(**cfg["model"]), DataConfig(block_size=cfg["block_size"]), TrainConfig(**training))
    trainer = TimedPretrainer(config, data=TrainingData(train, val, tok))
    result = trainer.train()
    return {"curve": curve, "train_time": trainer.train_time, "final_bpb": curve[-1][1], "steps": steps, "trainer": trainer,
            "tokens_per_step": trainer.plan.tokens_per_step, "metrics": result.metrics}


def bare_step_time(trainer, steps: int) -> float:
    """Seconds per step of a bare loop on the same model/optimizer settings: forward, loss, backward, clip, step."""
    from hfscratch.training.data import make_labels
    from hfscratch.training.optim import build_optimizer

    model = trainer.unwrapped
    args = trainer.args
    opt = build_optimizer(model, 1e-4, args.weight_decay, (args.adam_beta1, args.adam_beta2))
    blocks, micro = trainer.train_blocks, trainer.plan.per_device_train_batch_size
    batches = [blocks.get(list(range(i * micro, (i + 1) * micro))) for i in range(steps)]
    times = []
    for batch in batches:
        start = time.perf_counter()
        labels = make_labels(batch["input_ids"], batch["position_ids"], None)
        # the same model call as the loop (chunked loss, no logits), so the difference is the loop alone
        loss = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=labels, use_cache=False, skip_logits=True).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def recipe_step_time(trainer, steps: int) -> float:
    """Median seconds per step of the real loop (`Pretrainer._train_step`), same batch shapes."""
    from hfscratch.training.data import StepBatches

    plan = trainer.plan
    loader = iter(torch.utils.data.DataLoader(
        StepBatches(trainer.train_blocks, seed=1, start_sequence=0, num_steps=steps, micro=plan.per_device_train_batch_size, accum=1, world=1, rank=0),
        batch_size=None,
    ))
    for group in trainer.optimizer.param_groups:
        group["lr"] = 1e-4
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer._train_step(loader)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    """Training seconds at which the validation curve first reaches `target`, linear between evaluations."""
    previous = None
    for t, bpb in curve:
        if bpb <= target:
            if previous is None or previous[1] == bpb:
                return t
            (t0, b0) = previous
            return t0 + (b0 - target) / (b0 - bpb) * (t - t0)
        previous = (t, bpb)
    return None


def bpb_at(curve: list[tuple[float, float]], seconds: float) -> float | None:
    before = [bpb for t, bpb in curve if t <= seconds]
    return before[-1] if before else None


def scaling(workdir: Path, steps: int) -> dict:
    """tokens/s of the recipe with 1 process vs 2 processes (torchrun, gloo), one thread each, same per-process batch.

    Efficiency = tokens/s of 2 processes / (2 x tokens/s of 1): the cost of the gradient all-reduce and the
    rank-synchronised loop when each process owns one core (the situation of one GPU per process)."""
    text = (Path(os.environ.get("HFSCRATCH_SHARED_DATA", REPO.parent / "shared" / "data")) / "tinyshakespeare" / "input.txt").read_text()
    from datasets import DatasetDict

    from hfscratch.tokenizer import train_tokenizer

    tok = train_tokenizer([d for d in text.split("\n\n") if d.strip()], 1024, output_dir=workdir / "tok-scale", show_progress=False)
    docs = [d for d in text.split("\n\n") if d.strip()]
    DatasetDict(train=pack_text_documents(docs, tok, 128), validation=pack_text_documents(docs[-200:], tok, 128)).save_to_disk(workdir / "ds-scale")
    common = ["--dataset_path", str(workdir / "ds-scale"), "--tokenizer_path", str(workdir / "tok-scale"), "--block_size", "128", "--max_steps", str(steps),
              "--per_device_train_batch_size", "16", "--eval_steps", "0", "--eval_max_batches", "1", "--save_steps", "0", "--report_to", "none",
              "--warmup_steps", "5", "--overwrite_output_dir", "true", "--sample_max_new_tokens", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO), ACCELERATE_USE_CPU="true")
    out = {}
    for procs in (1, 2):
        run_dir = workdir / f"scale-{procs}"
        threads = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", str(29600 + procs),
               str(REPO / "recipes" / "pretrain.py"), *common, "--output_dir", str(run_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(env, OMP_NUM_THREADS=threads), timeout=1800)
        if proc.returncode != 0:
            out[procs] = {"error": proc.stderr[-500:]}
            continue
        metrics = json.loads((run_dir / "metrics.json").read_text())
        out[procs] = {"tokens_per_second": metrics["tokens_per_second"], "threads_per_process": threads}
    if "tokens_per_second" in out.get(1, {}) and "tokens_per_second" in out.get(2, {}):
        out["efficiency"] = out[2]["tokens_per_second"] / (2 * out[1]["tokens_per_second"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (a few minutes): numbers are indicative only")
    parser.add_argument("--skip_scaling", action="store_true")
    parser.add_argument("--scaling_only", action="store_true", help="only the 2-process scaling measurement (needs 2 idle cores)")
    parser.add_argument("--runs", nargs="+", choices=list(HFSCRATCH_CONFIGS), default=list(HFSCRATCH_CONFIGS),
                        help="hfscratch configurations to run (default: all; the first is the loop-overhead reference)")
    parser.add_argument("--learning_rates", nargs="+", type=float, default=None,
                        help="run each configuration at each of these peak LRs (a sweep; default: the configuration's own)")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "RESULTS_pretrain.md"))
    opts = parser.parse_args()
    text = (Path(os.environ.get("HFSCRATCH_SHARED_DATA", REPO.parent / "shared" / "data")) / "tinyshakespeare" / "input.txt").read_text()
    assert text.isascii()  # so chars == bytes and nats/char / ln 2 == bits/byte
    if opts.scaling_only:
        scale = scaling(Path(tempfile.mkdtemp(prefix="bench_scaling_")), 20 if opts.quick else 60)
        print(json.dumps(scale, indent=1))
        return
    nano_iters = 400 if opts.quick else 2000
    hf_steps = 200 if opts.quick else 800
    workdir = Path(tempfile.mkdtemp(prefix="bench_pretrain_"))
    print(f"threads: {torch.get_num_threads()}, cpus: {os.cpu_count()}, workdir {workdir}", flush=True)

    nano = run_nanogpt_recipe(text, nano_iters, eval_every=max(50, nano_iters // 20))
    print(f"nanoGPT recipe: {nano_iters} iters, {nano['train_time']:.1f}s, final {nano['final_bpb']:.3f} bpb", flush=True)
    results = {}
    for base in opts.runs:
        for lr in opts.learning_rates or [None]:
            name = base if lr is None else f"{base} (lr {lr:g})"
            if lr is not None:
                HFSCRATCH_CONFIGS[name] = dict(HFSCRATCH_CONFIGS[base], training=dict(HFSCRATCH_CONFIGS[base]["training"], learning_rate=lr))
            results[name] = run_hfscratch(text, name, hf_steps, eval_every=max(20, hf_steps // 32), workdir=workdir)
            print(f"{name}: {hf_steps} steps, {results[name]['train_time']:.1f}s, final {results[name]['final_bpb']:.3f} bpb", flush=True)

    first = results[next(iter(results))]
    bare = bare_step_time(first["trainer"], 30)
    recipe = recipe_step_time(first["trainer"], 30)
    overhead = recipe / bare - 1
    scale = {} if opts.skip_scaling else scaling(workdir, 20 if opts.quick else 60)

    rows = ["| run | steps | train time (s) | final val bpb | time to 2.72 bpb (s) | bpb at nanoGPT's final time |", "|---|---|---|---|---|---|"]
    nano_t = time_to(nano["curve"], TARGET_BPB)
    rows.append(f"| nanoGPT CPU recipe (char, 4L/4H/128, block 64, batch 12) | {nano_iters} | {nano['train_time']:.1f} | {nano['final_bpb']:.3f} | "
                f"{'%.1f' % nano_t if nano_t else 'not reached'} | {nano['final_bpb']:.3f} |")
    for name, r in results.items():
        t = time_to(r["curve"], TARGET_BPB)
        at = bpb_at(r["curve"], nano["train_time"])
        rows.append(f"| {name} | {r['steps']} x {r['tokens_per_step']} tok | {r['train_time']:.1f} | {r['final_bpb']:.3f} | "
                    f"{'%.1f' % t if t else 'not reached'} | {'%.3f' % at if at else 'n/a'} |")
    speedup = [(name, nano_t / t) for name, r in results.items() if nano_t and (t := time_to(r["curve"], TARGET_BPB))]
    # Muon against AdamW on the same model and steps: time to 2.72 bpb, and to the AdamW run's own final quality.
    optimizer_lines = []
    for name, r in results.items():
        reference = next((results[n] for n in results if n == name.replace("-muon", "") and n != name), None)
        if reference is None:
            continue
        for label, target in (("2.72 bpb", TARGET_BPB), (f"AdamW's final {reference['final_bpb']:.3f} bpb", reference["final_bpb"])):
            t_muon, t_adamw = time_to(r["curve"], target), time_to(reference["curve"], target)
            if t_muon and t_adamw:
                optimizer_lines.append(f"{name} vs AdamW, time to {label}: {t_muon:.1f} s vs {t_adamw:.1f} s -> {t_muon / t_adamw:.2f} of AdamW's time (target <= 0.5)")
            else:
                optimizer_lines.append(f"{name} vs AdamW, time to {label}: {'not reached' if not t_muon else f'{t_muon:.1f} s'} vs "
                                       f"{'not reached' if not t_adamw else f'{t_adamw:.1f} s'}")
    lines = [
        "# Pretraining benchmark: TinyShakespeare time-to-quality (bits per byte on the last 10 %)",
        "",
        f"Machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{'QUICK mode (shortened runs)' if opts.quick else 'full runs'}. Shared machine: timings are noisy; re-run on a quiet one with",
        "`.venv/bin/python benchmarks/bench_pretrain_shakespeare.py` (add `--quick` for a few minutes).",
        "",
        *rows,
        "",
        *[f"Speed-up to 2.72 bpb, {name} vs nanoGPT recipe: {s:.2f}x (target >= 3x)" for name, s in speedup],
        *optimizer_lines,
        *([f"nanoGPT's recipe did not reach {TARGET_BPB} bpb in its {nano_iters} iterations ({nano['train_time']:.1f} s); "
           f"{name} reached it after {t:.1f} s = {t / nano['train_time']:.2f} of nanoGPT's whole run (an upper bound on the "
           f"time ratio; target <= 0.33)" for name, r in results.items() if (t := time_to(r["curve"], TARGET_BPB))] if not nano_t else []),
        "",
        f"Loop overhead (median step, same model and batch shape): recipe {recipe * 1e3:.2f} ms vs bare fwd/bwd/clip/AdamW {bare * 1e3:.2f} ms "
        f"-> {overhead:+.1%} (target <= 5 %)",
    ]
    if scale:
        if "efficiency" in scale:
            lines.append(f"2-process scaling (torchrun, gloo, CPU): 1 proc {scale[1]['tokens_per_second']:,.0f} tok/s, "
                         f"2 procs {scale[2]['tokens_per_second']:,.0f} tok/s (1 thread per process) -> efficiency {scale['efficiency']:.0%}")
        else:
            lines.append(f"2-process scaling failed: {scale}")
    lines += ["", "Curves (training seconds, val bpb):", f"- nanoGPT: {[(round(t, 1), round(b, 3)) for t, b in nano['curve']]}"]
    lines += [f"- {name}: {[(round(t, 1), round(b, 3)) for t, b in r['curve']]}" for name, r in results.items()]
    report = "\n".join(lines) + "\n"
    print(report)
    Path(opts.output).write_text(report, encoding="utf-8")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(*zip(*nano["curve"]), "o-", label="nanoGPT CPU recipe")
        for name, r in results.items():
            ax.plot(*zip(*r["curve"]), "o-", label=name)
        ax.axhline(TARGET_BPB, ls="--", color="gray", label="2.72 bpb")
        ax.set_xlabel("training wall time (s)")
        ax.set_ylabel("validation bits / byte")
        ax.set_ylim(top=5)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(Path(opts.output).with_suffix(".png"))
    except Exception as err:  # the table is the result; the plot is a convenience
        print(f"plot skipped: {err}")


if __name__ == "__main__":
    main()
