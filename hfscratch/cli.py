"""The one entry layer: `hfscratch <stage> ...` and `recipes/<stage>.py ...` both call `run_command`.

A stage is a `main(argv) -> int` or a module with `add_arguments(parser)` + `run(args)`, imported only when run (so
a missing optional extra breaks only its stage). `HfscratchError` becomes one `error:` line and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import torch

from .errors import ConfigError, HfscratchError

# command -> ("module:function", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("hfscratch.data.cli:main", "prepare data: clean (datatrove), train a tokenizer, tokenize and pack"),
    "pretrain": ("hfscratch.training.cli:main", "pretrain a model (same as `accelerate launch recipes/pretrain.py`)"),
    "sft": ("hfscratch.alignment.cli:main_sft", "supervised fine-tuning with TRL (same as recipes/sft.py)"),
    "dpo": ("hfscratch.alignment.cli:main_dpo", "direct preference optimisation with TRL (same as recipes/dpo.py)"),
    "grpo": ("hfscratch.alignment.cli:main_grpo", "GRPO with a verifiable math reward (same as recipes/grpo.py)"),
    "reward": ("hfscratch.alignment.cli:main_reward", "train a reward model on preference pairs with TRL (same as recipes/reward.py)"),
    "rlhf": ("hfscratch.alignment.cli:main_rlhf", "RLHF: GRPO against a learned reward model, KL to the start (same as recipes/rlhf.py)"),
    "merge": ("hfscratch.alignment.merge", "merge a LoRA adapter into a standalone checkpoint"),
    "eval": ("hfscratch.evaluation.cli", "evaluate with lm-eval (GSM8K, HellaSwag, ARC, ...) and bits-per-byte"),
    "chat": ("hfscratch.chat", "chat with a model in the terminal (streamed)"),
    "serve": ("hfscratch.serve", "serve a model over an OpenAI-compatible HTTP API, with a web chat page"),
    "push": ("hfscratch.hub", "push a model folder to the Hugging Face Hub"),
    "export": ("hfscratch.export", "export to a stock transformers architecture (llama, qwen3)"),
    "speedrun": ("hfscratch.speedrun:main", "the whole chain (data -> pretrain -> SFT -> reward -> RLHF -> eval) in one command, with a report"),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the whole usage block and exits; one `ConfigError` line is easier to act on."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def accept_both_spellings(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`--max_new_tokens` and `--max-new-tokens` name the same option: rewrite to the spelling the parser declares."""
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


def stage_main(command: str):
    """The `main(argv) -> int` of a command (argparse tool commands get one built from their options)."""
    target, _ = COMMANDS[command]
    module_name, _, function = target.partition(":")
    module = importlib.import_module(module_name)
    if function:
        return getattr(module, function)

    def main(argv: list[str]) -> int:
        parser = OneLineErrorParser(prog=f"hfscratch {command}", description=COMMANDS[command][1])
        module.add_arguments(parser)
        return int(module.run(parser.parse_args(accept_both_spellings(argv, parser))) or 0)

    return main


def name_deepspeed_accelerator() -> None:
    """Tell DeepSpeed up front which accelerator it will pick on a machine without CUDA.

    Accelerate and TRL import DeepSpeed whenever it is installed, and without CUDA its import logs "[WARNING]
    Setting accelerator to CPU ...". Naming "cpu" (what it picks anyway) keeps runs quiet; a set DS_ACCELERATOR wins.
    """
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


def let_collective_threads_finish(seconds: float = 0.25) -> None:
    """In a multi-process run, pause with the GIL released so torch.distributed's threads can let go of their work.

    A gloo worker thread drops its reference to a finished collective (taking the GIL) a moment after `wait()` has
    returned; if the interpreter is finalising by then, that thread dies inside a C++ destructor: "terminate called
    without an active exception", SIGABRT, a failed launch for a run that had saved (about 1 in 11 ZeRO-3 CPU runs).
    `destroy_process_group()` does not join these threads while DeepSpeed or DDP hold the group.
    """
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        time.sleep(seconds)


def run_command(command: str, argv: list[str]) -> int:
    """Run one stage with the project's error convention; the recipes call this with their command name."""
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    name_deepspeed_accelerator()
    try:
        return int(stage_main(command)(argv) or 0)
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


def print_commands() -> None:
    print("usage: hfscratch <command> [options]   (hfscratch <command> --help lists a command's options)\n\n"
          "Build, train, align, evaluate and publish your own LLM.\n\ncommands:")
    for name, (_, help_text) in COMMANDS.items():
        print(f"  {name:<10} {help_text}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command is None:
        unknown = [arg for arg in argv if arg not in ("-h", "--help", "--debug")]
        if unknown:
            print(f"error: unknown option {unknown[0]}; give a command first (see `hfscratch --help`)", file=sys.stderr)
            return 2
        print_commands()
        return 0
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose one of {', '.join(COMMANDS)} (see `hfscratch --help`)",
              file=sys.stderr)
        return 2
    at = argv.index(command)
    return run_command(command, argv[:at] + argv[at + 1:])


if __name__ == "__main__":
    sys.exit(main())
