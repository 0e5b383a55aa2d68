"""`hfscratch eval MODEL --tasks ... [--bpb FILE ...]` (also `python eval/run.py --model MODEL ...`)."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ConfigError
from .reports import flatten_results, results_markdown
from .runner import evaluate_model
from .tasks import LOCAL_EQUIVALENTS, list_tasks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="model folder (save_pretrained output) or Hub id")
    parser.add_argument("--tasks", default="", help="comma-separated lm-eval tasks, e.g. gsm8k_local,hellaswag_local "
                        "(with --data_dir, stock names such as gsm8k run their offline copy)")
    parser.add_argument("--data_dir", default=None, help="folder with gsm8k/, hellaswag/, eval-icl/ as in shared/data "
                        "(default: $HFSCRATCH_EVAL_DATA; none: lm-eval's Hub datasets)")
    parser.add_argument("--limit", type=float, default=None, help="rows per task (or a fraction below 1)")
    parser.add_argument("--num_fewshot", type=int, default=None, help="override the tasks' few-shot count")
    parser.add_argument("--apply_chat_template", action="store_true", help="wrap prompts in the tokenizer's chat template")
    parser.add_argument("--batch_size", default="8", help="batch size (an integer, or auto)")
    parser.add_argument("--max_gen_toks", type=int, default=None, help="cap on generated tokens (default: the task's, else 256; "
                        "lowered, with an info line, to what the longest prompt leaves of the context)")
    parser.add_argument("--output_dir", default=None, help="write results.json, results.md and one PNG per task here")
    parser.add_argument("--bpb", nargs="+", default=None, metavar="FILE", help="text files to score: bits-per-byte and perplexity")
    parser.add_argument("--max_length", type=int, default=None, help="context window in tokens (default: the model's)")
    parser.add_argument("--stride", type=int, default=None, help="sliding-window step for --bpb (default: max_length // 2)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA GPUs that have it, else float32), float32, bfloat16, float16")
    parser.add_argument("--include_path", nargs="+", default=None, help="extra folders of lm-eval task YAMLs")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow a model folder's own modeling code")
    parser.add_argument("--log_samples", action="store_true", help="also write every prompt and answer (samples_<task>.jsonl)")
    parser.add_argument("--write_model_card", action="store_true", help="put the scores into MODEL/README.md's model-index")
    parser.add_argument("--list_tasks", action="store_true", help="print the local task names and exit")


def run(args: argparse.Namespace) -> int:
    if args.list_tasks:
        print("local tasks (need --data_dir or $HFSCRATCH_EVAL_DATA):")
        for name in list_tasks(args.include_path):
            print(f"  {name}")
        print("with a data folder these lm-eval names run their local copy: " + ", ".join(LOCAL_EQUIVALENTS))
        return 0
    if not args.model:
        raise ConfigError("no model given: pass a model folder or Hub id (hfscratch eval out/model --tasks gsm8k_local)")
    batch_size = args.batch_size if args.batch_size.startswith("auto") else _positive_int(args.batch_size)
    results = evaluate_model(
        args.model, tasks=args.tasks, limit=args.limit, num_fewshot=args.num_fewshot, batch_size=batch_size,
        data_dir=args.data_dir, apply_chat_template=args.apply_chat_template, output_dir=args.output_dir,
        device=args.device, gen_kwargs={"max_gen_toks": args.max_gen_toks} if args.max_gen_toks else None,
        include_path=args.include_path, bpb_files=args.bpb, max_length=args.max_length, stride=args.stride,
        dtype=args.dtype, trust_remote_code=args.trust_remote_code, log_samples=args.log_samples,
        update_model_card=args.write_model_card)
    print(results_markdown(results))
    if args.output_dir:
        print(f"wrote {len(results['hfscratch'].get('files', []))} files to {args.output_dir}", file=sys.stderr)
    else:
        print(json.dumps(flatten_results(results), indent=2))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"--batch_size must be a positive integer or 'auto', got {text!r}")
    return value
