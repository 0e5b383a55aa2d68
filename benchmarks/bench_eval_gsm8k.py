"""GSM8K generation through lm-eval: hfscratch vs transformers' LlamaForCausalLM with the same weights.

Both models run lm-eval's HFLM.generate_until on the same 5-shot `gsm8k_local` requests (batch 8, left padding,
greedy, KV cache), alternated round by round in one process so machine noise hits both alike. The Llama copy
comes from `hfscratch.export.export_model(..., to="llama")`. Prints a table with the hfscratch/Llama speed ratio
(>= 1.0 means hfscratch is at least as fast) and checks both produced the same text.

    python benchmarks/bench_eval_gsm8k.py --data_dir ../shared/data                  # 100 problems
    python benchmarks/bench_eval_gsm8k.py --data_dir ../shared/data --limit 16 --rounds 1   # quick
    python benchmarks/bench_eval_gsm8k.py --data_dir ../shared/data --device cuda --dtype bfloat16 --hidden 1024 --layers 12
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hfscratch import HfscratchConfig, HfscratchForCausalLM  # noqa: E402
from hfscratch.evaluation.tasks import load_planned_tasks, plan_tasks  # noqa: E402


def build_checkpoint(args, folder: Path):
    from hfscratch.tokenizer import train_tokenizer

    rows = [json.loads(line) for line in (Path(args.data_dir) / "gsm8k" / "train.jsonl").read_text().splitlines()]
    texts = [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows]
    tokenizer = train_tokenizer(texts, vocab_size=args.vocab, output_dir=folder / "tok", show_progress=False)
    torch.manual_seed(0)
    config = HfscratchConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = HfscratchForCausalLM(config)
    model.save_pretrained(folder / "hfscratch")
    tokenizer.save_pretrained(folder / "hfscratch")
    return folder / "hfscratch"


def load(kind: str, path: Path, args):
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
    expected = "HfscratchForCausalLM" if kind == "hfscratch" else "LlamaForCausalLM"
    assert type(model).__name__ == expected, type(model).__name__
    return HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(path), backend="causal", batch_size=args.batch_size)


def gsm8k_requests(data_dir, limit: int, max_gen_toks: int) -> list:
    """The first `limit` 5-shot `gsm8k_local` generation requests, each capped at `max_gen_toks` new tokens."""
    task = load_planned_tasks(plan_tasks(["gsm8k_local"], data_dir=data_dir))["tasks"]["gsm8k_local"]
    task.set_fewshot_seed(1234)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    for request in task.instances:
        request.arguments = (request.arguments[0], {**request.arguments[1], "max_gen_toks": max_gen_toks})
    return task.instances


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--limit", type=int, default=100, help="GSM8K test problems")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_gen_toks", type=int, default=128, help="tokens generated per problem (an untrained model never stops early)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per model")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv_heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--results", default=str(Path(__file__).resolve().parent / "RESULTS_eval.md"))
    args = parser.parse_args(argv)

    from hfscratch.export import export_model

    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf_path = build_checkpoint(args, tmp)
        llama_path = export_model(hf_path, tmp / "llama", to="llama")
        requests = gsm8k_requests(args.data_dir, args.limit, args.max_gen_toks)
        models = {"hfscratch": load("hfscratch", hf_path, args), "llama": load("llama", llama_path, args)}
        prompt_tokens = sum(len(models["hfscratch"].tok_encode(r.args[0])) for r in requests)

        for name, lm in models.items():  # warm-up: first-call allocations and kernel selection stay out of the timing
            with torch.inference_mode():
                lm.generate_until(requests[: args.batch_size], disable_tqdm=True)
        times = {name: [] for name in models}
        outputs = {}
        for round_index in range(args.rounds):
            order = list(models) if round_index % 2 == 0 else list(reversed(models))
            for name in order:
                sync(args.device)
                start = time.perf_counter()
                with torch.inference_mode():
                    outputs[name] = models[name].generate_until(requests, disable_tqdm=True)
                sync(args.device)
                times[name].append(time.perf_counter() - start)
                print(f"round {round_index + 1} {name}: {times[name][-1]:.2f}s", file=sys.stderr)

    same = sum(a == b for a, b in zip(outputs["hfscratch"], outputs["llama"]))
    best = {name: min(values) for name, values in times.items()}
    ratio = best["llama"] / best["hfscratch"]
    generated = args.limit * args.max_gen_toks
    params = sum(p.numel() for p in models["hfscratch"].model.parameters())
    lines = [
        f"### GSM8K generation through lm-eval ({args.limit} problems, 5-shot, batch {args.batch_size}, KV cache, "
        f"{args.max_gen_toks} new tokens each, {args.dtype} on {args.device})",
        "",
        f"Model: {args.layers} layers, hidden {args.hidden}, {args.heads} heads / {args.kv_heads} KV heads, vocab {args.vocab} "
        f"({params / 1e6:.1f}M params); prompts {prompt_tokens} tokens in all (left-truncated to the model context). "
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads. "
        f"Best of {args.rounds} alternating rounds after one warm-up batch each.",
        "",
        "| model | best s | all rounds s | problems/s | new tokens/s |",
        "|---|--:|---|--:|--:|",
    ]
    for name in models:
        lines.append(f"| {name} | {best[name]:.2f} | {', '.join(f'{t:.2f}' for t in times[name])} | "
                     f"{args.limit / best[name]:.2f} | {generated / best[name]:.0f} |")
    lines += ["", f"**hfscratch / Llama speed ratio: {ratio:.3f}** (target >= 1.0). Identical generations: {same}/{len(requests)}.", ""]
    table = "\n".join(lines)
    print(table)
    command = "python benchmarks/bench_eval_gsm8k.py " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.results).write_text(
        "# Evaluation benchmarks\n\nThis run: `" + command.strip() + "`. Re-run with the defaults "
        "(`python benchmarks/bench_eval_gsm8k.py --data_dir ../shared/data`: 128 new tokens per problem) on a quiet "
        "machine; add `--limit 16 --rounds 1` for a quick check, `--device cuda --dtype bfloat16` on a GPU.\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
