"""`hfscratch <command>`: one entry point that lists every pipeline stage.

Each stage module exposes `add_arguments(parser)` and `run(args) -> int`; this file only wires them up
and turns `HfscratchError` into a one-line message with exit code 2 (`--debug` shows the traceback).
Stage modules are imported lazily so `hfscratch --help` stays fast and one broken extra does not
take down the other commands.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from .errors import HfscratchError
from .recipe_args import let_collective_threads_finish, name_deepspeed_accelerator

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("hfscratch.data.cli", "prepare data: clean (datatrove), train a tokenizer, tokenize and pack"),
    "pretrain": ("hfscratch.training.cli", "pretrain a model (same as `accelerate launch recipes/pretrain.py`)"),
    "sft": ("hfscratch.alignment.cli_sft", "supervised fine-tuning with TRL (same as recipes/sft.py)"),
    "dpo": ("hfscratch.alignment.cli_dpo", "direct preference optimisation with TRL (same as recipes/dpo.py)"),
    "grpo": ("hfscratch.alignment.cli_grpo", "GRPO with a verifiable math reward (same as recipes/grpo.py)"),
    "merge": ("hfscratch.alignment.merge", "merge a LoRA adapter into a standalone checkpoint"),
    "eval": ("hfscratch.evaluation.cli", "evaluate with lm-eval (GSM8K, HellaSwag, ARC, ...) and bits-per-byte"),
    "chat": ("hfscratch.chat", "chat with a model in the terminal (streamed)"),
    "push": ("hfscratch.hub", "push a model folder to the Hugging Face Hub"),
    "export": ("hfscratch.export", "export to a stock transformers architecture (llama, qwen3)"),
}


def _available_commands() -> dict[str, tuple[str, str]]:
    found = {}
    for name, (module, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) is None:
            continue
        try:
            if importlib.util.find_spec(module) is not None:
                found[name] = (module, help_text)
        except ModuleNotFoundError:
            continue
    return found


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the whole usage block before an error; a single line is easier to act on."""

    def error(self, message: str):
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, str]]:
    parser = OneLineErrorParser(prog="hfscratch", description="Build, train, align, evaluate and publish your own LLM.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    modules = {}
    for name, (module, help_text) in _available_commands().items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.add_argument("--debug", action="store_true", help="show full tracebacks")
        modules[name] = module
    return parser, modules


def accept_both_spellings(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`--max_new_tokens` and `--max-new-tokens` name the same option in every command: a spelling the command does
    not declare is rewritten to the one it does (stage options come from dataclass fields, so most use underscores)."""
    known = set(parser._option_string_actions)
    rewritten = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name.startswith("--") and name not in known:
            for other in ("--" + name[2:].replace("-", "_"), "--" + name[2:].replace("_", "-")):
                if other in known:
                    arg = other + eq + value
                    break
        rewritten.append(arg)
    return rewritten


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name_deepspeed_accelerator()
    parser, modules = build_parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in modules:
        # Let the stage module add its own arguments only for the command being run.
        stage = importlib.import_module(modules[command])
        stage_parser = parser._subparsers._group_actions[0].choices[command]
        stage.add_arguments(stage_parser)
        at = argv.index(command)
        argv = argv[: at + 1] + accept_both_spellings(argv[at + 1 :], stage_parser)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    debug = getattr(args, "debug", False) or "--debug" in argv
    try:
        return int(stage.run(args) or 0)
    except HfscratchError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        let_collective_threads_finish()


if __name__ == "__main__":
    sys.exit(main())
