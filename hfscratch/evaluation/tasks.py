"""Finding, checking and loading lm-eval tasks: the offline `*_local` copies in eval/tasks and lm-eval's own.

The local copies read a data folder chosen at run time (`data_dir`, else $HFSCRATCH_EVAL_DATA), passed through
`TaskManager(metadata=...)`; with one, stock names that have a local copy (`gsm8k`, ...) run that copy.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_file_atomically
from ..errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DATA_ENV_VAR = "HFSCRATCH_EVAL_DATA"
TASKS_ENV_VAR = "HFSCRATCH_EVAL_TASKS"

# lm-eval task -> its offline copy in eval/tasks
LOCAL_EQUIVALENTS = {name: f"{name}_local" for name in (
    "gsm8k", "gsm8k_cot_zeroshot", "hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "lambada_openai",
    "boolq", "openbookqa")}

_REQUIRED_KEYS = ("task", "output_type")
_OUTPUT_TYPES = ("loglikelihood", "loglikelihood_rolling", "multiple_choice", "generate_until")


def default_tasks_dir() -> Path:
    """The shipped task YAMLs (the checkout's eval/tasks points here); $HFSCRATCH_EVAL_TASKS overrides."""
    if os.environ.get(TASKS_ENV_VAR):
        return Path(os.environ[TASKS_ENV_VAR]).expanduser()
    return Path(__file__).resolve().parent / "lm_eval_tasks"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    chosen = data_dir or os.environ.get(DATA_ENV_VAR)
    if not chosen:
        return None
    path = Path(chosen).expanduser().resolve()
    if not path.is_dir():
        raise DataError(f"eval data folder {path} does not exist; pass --data_dir (or ${DATA_ENV_VAR}) pointing at a folder with gsm8k/, hellaswag/, eval-icl/ as in shared/data")
    return path


def read_task_yamls(include_dirs: list[Path]) -> dict[str, Path]:
    """Task name -> file for every task YAML in `include_dirs`, parsed without importing its functions (lm-eval would
    skip a broken YAML with a log line and then report "unknown task"; this names the file and the problem)."""
    import yaml
    from lm_eval.tasks._yaml_loader import load_yaml

    names: dict[str, Path] = {}
    for folder in include_dirs:
        if not folder.is_dir():
            raise ConfigError(f"task folder {folder} does not exist; pass --include_path a folder of lm-eval task YAMLs")
        for path in sorted(folder.rglob("*.yaml")):
            try:
                config = load_yaml(path, resolve_func=False)
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                where = f" line {mark.line + 1}" if mark is not None else ""
                problem = getattr(err, "problem", None) or str(err).splitlines()[0]
                raise ConfigError(f"malformed task YAML {path}{where}: {problem}; fix the file or remove it from the task folder") from None
            except (OSError, ValueError) as err:
                raise ConfigError(f"malformed task YAML {path}: {err}; fix the file or remove it from the task folder") from None
            if not isinstance(config, dict):
                raise ConfigError(f"malformed task YAML {path}: top level is a {type(config).__name__}, expected a mapping of task fields")
            if "group" in config or ("task" in config and isinstance(config["task"], list)):
                names[str(config.get("group"))] = path
                continue
            missing = [key for key in _REQUIRED_KEYS if key not in config]
            if missing:
                raise ConfigError(f"malformed task YAML {path}: missing {', '.join(missing)}; every task needs `task:` and `output_type:`")
            if config["output_type"] not in _OUTPUT_TYPES:
                raise ConfigError(f"malformed task YAML {path}: output_type {config['output_type']!r} is not one of {', '.join(_OUTPUT_TYPES)}")
            names[str(config["task"])] = path
            for tag in config.get("tag", []) or []:
                names.setdefault(str(tag), path)
    return names


@dataclass
class TaskPlan:
    """Which task names run, from where, and the TaskManager that loads them."""

    names: list[str]
    renamed: dict[str, str] = field(default_factory=dict)  # requested stock name -> local copy
    data_dir: Path | None = None
    include_dirs: list[Path] = field(default_factory=list)
    uses_stock_tasks: bool = False
    task_manager: object = None


def plan_tasks(tasks: list[str] | str, data_dir: str | os.PathLike | None = None,
               include_path: list[str | os.PathLike] | None = None) -> TaskPlan:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise ConfigError("no tasks given; pass --tasks gsm8k_local,hellaswag_local (list them with --list_tasks)")
    resolved_data = resolve_data_dir(data_dir)
    include_dirs = _include_dirs(include_path)
    local_names = read_task_yamls(include_dirs)

    plan = TaskPlan(names=[], data_dir=resolved_data, include_dirs=include_dirs)
    for name in names:
        local_copy = LOCAL_EQUIVALENTS.get(name) if resolved_data is not None else None
        if name not in local_names and local_copy in local_names:
            plan.renamed[name] = local_copy
            name = local_copy
        plan.names.append(name)
        plan.uses_stock_tasks |= name not in local_names
    if plan.renamed:
        logger.info("data folder given: running the offline copies %s", ", ".join(f"{a} -> {b}" for a, b in plan.renamed.items()))

    shipped = default_tasks_dir().resolve()
    reads_shipped_data = any(n in local_names and local_names[n].parent.resolve() == shipped for n in plan.names)
    if reads_shipped_data and resolved_data is None:
        raise DataError(f"tasks {', '.join(n for n in plan.names if n in local_names)} read local files: pass "
                        f"--data_dir DIR (or set ${DATA_ENV_VAR}) with gsm8k/, hellaswag/, eval-icl/ as in shared/data; "
                        "or drop the _local suffix to run lm-eval's Hub-backed tasks")

    from lm_eval.tasks import TaskManager

    known = set(local_names) | (stock_task_names() if plan.uses_stock_tasks else set())
    unknown = [n for n in plan.names if n not in known and not Path(n).is_file()]
    if unknown:
        pool = sorted(known | set(LOCAL_EQUIVALENTS))
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, pool, n=5, cutoff=0.6)
            hints.append(f"'{name}'" + (f" (close: {', '.join(close)})" if close else ""))
        raise ConfigError(f"unknown task {'; '.join(hints)}; local tasks: {', '.join(sorted(local_names))}")
    metadata = {"data_dir": str(resolved_data)} if resolved_data is not None else {}
    # Indexing lm-eval's ~15k built-in YAMLs takes seconds, so it happens only when a stock task is asked for.
    plan.task_manager = TaskManager(include_path=[str(p) for p in include_dirs], include_defaults=plan.uses_stock_tasks, metadata=metadata)
    return plan


def stock_task_names() -> set[str]:
    """Every task/group/tag name lm-eval ships, cached per lm-eval install (building its index takes 5-20 s)."""
    import hashlib
    import json

    import lm_eval

    key = hashlib.sha1(f"{lm_eval.__version__}:{Path(lm_eval.__file__).resolve()}".encode()).hexdigest()[:12]
    cache_dir = Path(os.environ.get("HFSCRATCH_CACHE", Path.home() / ".cache" / "hfscratch")).expanduser()
    cache = cache_dir / f"lm_eval_task_names-{key}.json"
    try:
        return set(json.loads(cache.read_text()))
    except (OSError, ValueError):  # not cached yet, or unreadable
        pass
    from lm_eval.tasks import TaskManager

    names = sorted(TaskManager(include_defaults=True).all_tasks)
    try:
        write_file_atomically(cache, json.dumps(names))
    except OSError:  # a read-only home only costs the next run the same few seconds
        pass
    return set(names)


def load_planned_tasks(plan: TaskPlan) -> dict:
    """Build the Task objects (this reads the data); data and template problems become one-line errors."""
    try:
        return plan.task_manager.load(plan.names)
    except FileNotFoundError as err:
        raise DataError(f"{err}") from None
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"a task YAML names a function that cannot be loaded ({err}); fix its `!function` entry") from None
    except ConnectionError as err:
        raise DataError(f"lm-eval could not download a task's dataset ({err}); you seem to be offline: pass --data_dir to run the *_local copies") from None


def _include_dirs(include_path: list[str | os.PathLike] | None) -> list[Path]:
    return [default_tasks_dir(), *(Path(p).expanduser() for p in include_path or [])]


def list_tasks(include_path: list[str | os.PathLike] | None = None) -> list[str]:
    return sorted(read_task_yamls(_include_dirs(include_path)))
