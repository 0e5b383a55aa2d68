"""Parse a recipe's YAML config plus CLI overrides into dataclasses, alignment-handbook style.

`--config recipes/configs/x.yaml --learning_rate 1e-3` : the YAML gives defaults, the CLI wins.
Unknown keys and values of the wrong type are one-line `ConfigError`s naming the key and the fix,
rather than HfArgumentParser's tracebacks (which also accept silently-ignored YAML keys when asked).
The YAML values are turned into `--key value` arguments placed before the CLI ones, so argparse checks
YAML and CLI values with the same field types.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import HfArgumentParser

from .errors import ConfigError, HfscratchError

# The recipes' YAML configs ship inside the package (the checkout's recipes/configs points here), so an installed
# wheel runs every stage's default from any folder.
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def packaged_config(name: str) -> Path:
    """The shipped YAML `name` (e.g. "sft_synthetic_math"); a path or `recipes/configs/x.yaml` also names it."""
    file_name = Path(name).name if Path(name).suffix in (".yaml", ".yml") else f"{Path(name).name}.yaml"
    return CONFIGS_DIR / file_name


def resolve_config_path(path: str | Path) -> Path:
    """An existing file as given; otherwise the shipped config of that name (`--config pretrain_tiny` works too)."""
    given = Path(path).expanduser()
    if given.is_file():
        return given
    shipped = packaged_config(str(path))
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
    raise ConfigError(f"config file {path} not found; pass an existing YAML with --config, or one of the shipped "
                      f"configs by name: {names}")


def _field_names(dataclass_types) -> dict[str, type]:
    names = {}
    for dtype in dataclass_types:
        for field in dataclasses.fields(dtype):
            if field.init:
                names[field.name] = dtype
    return names


def _yaml_to_argv(config: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in config.items():
        if value is None:
            continue
        if isinstance(value, bool):
            argv += [f"--{key}", str(value).lower()]
        elif isinstance(value, (list, tuple)):
            if value:
                argv += [f"--{key}", *[json.dumps(v) if isinstance(v, (dict, list)) else str(v) for v in value]]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    path = resolve_config_path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML ({str(err).splitlines()[0]}); fix the syntax") from None
    if not isinstance(config, dict):
        raise ConfigError(f"config file {path} must be a YAML mapping of key: value, got {type(config).__name__}")
    return config


def parse_recipe_args(dataclass_types, argv: list[str] | None = None, prog: str | None = None):
    """Return one instance per dataclass type from `--config YAML` and CLI overrides."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a path to a YAML file, e.g. --config recipes/configs/pretrain_tiny.yaml")
        config_path = argv[i + 1]
        argv = argv[:i] + argv[i + 2 :]
    known = _field_names(dataclass_types)
    yaml_argv: list[str] = []
    if config_path is not None:
        config = load_yaml_config(config_path)
        for key in config:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigError(f"unknown key {key!r} in {config_path}{hint}; remove it or fix its name")
        yaml_argv = _yaml_to_argv(config)
    for arg in argv:
        if arg.startswith("--") and "=" not in arg and arg[2:] not in known and arg[2:] not in ("help", "debug"):
            close = difflib.get_close_matches(arg[2:], known, n=3)
            hint = f" (did you mean {', '.join('--' + c for c in close)}?)" if close else ""
            raise ConfigError(f"unknown option {arg}{hint}; see --help for the options")
    # A bare `--debug` is the recipes' traceback switch (read by `run_recipe`), not a field: take it out here.
    # transformers' TrainConfig has a `debug` field of its own, so only register the flag when absent.
    argv = [arg for arg in argv if arg != "--debug"]
    parser = HfArgumentParser(dataclass_types, prog=prog)
    if "--debug" not in parser._option_string_actions:
        parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")

    def error(message: str):  # argparse would print usage and exit; we want one line and ConfigError
        raise ConfigError(f"{message} (source: {'YAML ' + config_path + ' or ' if config_path else ''}command line)")

    parser.error = error
    outputs = parser.parse_args_into_dataclasses(args=yaml_argv + argv, return_remaining_strings=False)
    return outputs[:-1] if len(outputs) > len(dataclass_types) else outputs


def name_deepspeed_accelerator() -> None:
    """Tell DeepSpeed up front which accelerator it will pick on a machine without CUDA.

    Accelerate (`unwrap_model`, `get_state_dict`) and TRL import DeepSpeed whenever it is installed, even in runs that
    never use it, and on a machine without CUDA its import logs "[WARNING] Setting accelerator to CPU ..." after
    probing. Answering here, at the entry points, covers every such import rather than one call site each. Naming "cpu" (what the
    probe picks there anyway) keeps normal runs quiet; a DS_ACCELERATOR the user set wins.
    """
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


def run_recipe(main, argv: list[str] | None = None) -> None:
    """Run a recipe's `main()`, turning `HfscratchError` into one line on stderr and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name_deepspeed_accelerator()
    try:
        main(argv)
    except HfscratchError as err:
        if "--debug" in argv:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        let_collective_threads_finish()


def let_collective_threads_finish(seconds: float = 0.25) -> None:
    """In a multi-process run, pause with the GIL released so torch.distributed's threads can let go of their work.

    A gloo worker thread drops its reference to a finished collective a moment *after* `wait()` has returned on
    the main thread, and dropping a tensor Python has seen takes the GIL (the final barrier holds the ZeRO-3
    all-gathers issued before it, and their tensors). If the main thread is already finalising the interpreter
    by then, Python ends that thread inside a C++ destructor: "terminate called without an active exception",
    SIGABRT, a failed `accelerate launch` for a run that had finished and saved (seen in about 1 of 11 ZeRO-3
    CPU runs; core dump: `~AsyncBarrierWork` -> `~AsyncAllgatherWork` -> GIL acquire -> `PyThread_exit_thread`).
    `destroy_process_group()` does not join these threads while DeepSpeed or DDP still hold the group, so the
    fix is to give them the GIL and a moment of CPU before exit. Single-process runs skip this.
    """
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        time.sleep(seconds)


# ---------------------------------------------------------------------------------------------- `hfscratch <stage>`
# The stage commands list a recipe's dataclass fields as options (so `--help` shows them) and hand the values
# back to `parse_recipe_args` as strings: YAML and command line are then checked by one parser.


def _field_kind(annotation) -> str:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return "list" if text.startswith("list") else "bool" if text.startswith("bool") else "value"


def add_dataclass_options(parser, dataclass_types, config_help: str, shown=None) -> None:
    """Add `--config` and one option per field; `shown(dtype, field)` may hide fields from --help."""
    import argparse

    parser.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
    for dtype in dataclass_types:
        group = parser.add_argument_group(dtype.__name__)
        for f in dataclasses.fields(dtype):
            if f.name == "debug" or (shown is not None and not shown(dtype, f)):
                continue  # --debug is the traceback switch, never a field value
            if f.default is not dataclasses.MISSING:
                default = f.default
            else:
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            first_line = (str(f.metadata.get("help") or "").splitlines() or [""])[0]
            help_text = f"{first_line} (default: {default})".strip()
            kind = _field_kind(f.type)
            if kind == "list":
                group.add_argument(f"--{f.name}", nargs="*", default=argparse.SUPPRESS, help=help_text)
            elif kind == "bool":
                group.add_argument(f"--{f.name}", nargs="?", const="true", default=argparse.SUPPRESS, help=help_text)
            else:
                group.add_argument(f"--{f.name}", default=argparse.SUPPRESS, help=help_text)


def options_to_argv(args, dataclass_types) -> list[str]:
    """The options given on the command line, back as argv for `parse_recipe_args`."""
    argv: list[str] = ["--config", args.config] if getattr(args, "config", None) else []
    for dtype in dataclass_types:
        for f in dataclasses.fields(dtype):
            if f.name != "debug" and hasattr(args, f.name):
                value = getattr(args, f.name)
                argv += [f"--{f.name}", *value] if isinstance(value, list) else [f"--{f.name}", str(value)]
    return argv
