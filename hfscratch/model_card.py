"""Model cards (README.md) written from what a run knows, with evaluation results as Hub `model-index`.

The architecture comes from config.json and the parameter count from the safetensors headers (no weights are
loaded); the prose is `model_card.jinja`. Results go into the YAML metadata as `model-index` (huggingface_hub's
`ModelCardData`/`EvalResult`) so the Hub shows them; entries already in an existing card are kept.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .atomic import write_file_atomically
from .errors import CheckpointError, ConfigError

README = "README.md"
LOSS_CURVE_NAME = "loss_curve.png"
CARD_TEMPLATE = Path(__file__).with_name("model_card.jinja")
# lm-eval is the harness hfscratch evaluates with; the Hub requires a URL next to a source name.
_KNOWN_SOURCES = {"lm-eval": "https://github.com/EleutherAI/lm-evaluation-harness"}
_EVAL_KEYS = ("task_type", "task_name", "dataset_type", "dataset_name", "metric_type", "metric_name", "metric_value")


def _read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir} has no config.json, so it is not a model folder; pass the folder save_pretrained wrote")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); re-save the model with save_pretrained") from err


def safetensors_shapes(folder: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the folder's safetensors files, read from their headers."""
    from safetensors import safe_open

    shapes = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def count_parameters(model_dir: str | Path) -> int | None:
    """Parameters stored in the folder's safetensors files, read from their headers (tied weights count once)."""
    if not any(Path(model_dir).glob("*.safetensors")):
        return None
    return sum(math.prod(shape) for shape in safetensors_shapes(model_dir).values())


def human_count(n: int | float | None) -> str:
    """1234567 -> '1.23M' (parameters, tokens)."""
    if n is None:
        return "unknown"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n)) if float(n).is_integer() else f"{n:.3g}"


def _architecture_name(config: dict) -> str:
    if config.get("model_type") != "hfscratch":
        return config.get("model_type", "unknown")
    learned = config.get("position_embedding_type") == "learned"
    if learned and config.get("norm_type") == "layernorm" and config.get("mlp_type") == "gelu":
        return "hfscratch (GPT-2 style: learned positions, LayerNorm, GELU MLP)"
    if not learned and config.get("norm_type", "rmsnorm") == "rmsnorm" and config.get("mlp_type", "swiglu") == "swiglu":
        return "hfscratch (Qwen3 style: RoPE, RMSNorm, SwiGLU, QK-norm)" if config.get("qk_norm") else "hfscratch (Llama style: RoPE, RMSNorm, SwiGLU)"
    mix = ", ".join(f"{k}={config.get(k)}" for k in ("position_embedding_type", "norm_type", "mlp_type", "qk_norm"))
    return f"hfscratch (custom mix: {mix})"


def _architecture_rows(config: dict, n_params: int | None) -> list[tuple[str, Any]]:
    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    attention = "MHA" if kv_heads == heads else ("MQA" if kv_heads == 1 else "GQA")
    rows = [
        ("architecture", _architecture_name(config)),
        ("parameters", f"{human_count(n_params)} ({n_params:,})" if n_params else "unknown"),
        ("layers", config.get("num_hidden_layers")),
        ("hidden size", config.get("hidden_size")),
        ("attention heads (query / key-value)", f"{heads} / {kv_heads} ({attention})"),
        ("head dim", config.get("head_dim")),
        ("MLP", f"{config.get('mlp_type', 'swiglu')}, intermediate size {config.get('intermediate_size')}"),
        ("vocabulary", config.get("vocab_size")),
        ("context length", config.get("max_position_embeddings")),
        ("positions", config.get("position_embedding_type", "rope")),
        ("norm", config.get("norm_type", "rmsnorm")),
        ("tied embeddings", config.get("tie_word_embeddings")),
        ("weights dtype", config.get("dtype") or config.get("torch_dtype")),
    ]
    return [(k, v) for k, v in rows if v is not None]


def _table(rows, header=("", "")) -> str:
    return "\n".join([f"| {header[0]} | {header[1]} |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in rows])


def _cell(value) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        text = f"{value:,} ({human_count(value)})"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(str(v) for v in value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _to_eval_result(item: dict | EvalResult) -> EvalResult:
    if isinstance(item, EvalResult):
        return item
    missing = [k for k in ("task_type", "dataset_type", "dataset_name", "metric_type", "metric_value") if item.get(k) is None]
    if missing:
        raise ConfigError(f"eval result {item!r} lacks {', '.join(missing)}; give task_type, dataset_type, dataset_name, metric_type and metric_value")
    known = set(EvalResult.__dataclass_fields__)
    unknown = sorted(set(item) - known)
    if unknown:
        raise ConfigError(f"eval result has unknown keys {unknown}; allowed: {sorted(known)}")
    kwargs = dict(item)
    if kwargs.get("source_name") and not kwargs.get("source_url"):
        url = next((u for name, u in _KNOWN_SOURCES.items() if name in kwargs["source_name"].lower()), None)
        if url is None:
            kwargs.pop("source_name")  # the Hub schema needs a URL with a source name; without one, drop the source
        else:
            kwargs["source_url"] = url
    value = kwargs["metric_value"]
    if hasattr(value, "item"):  # numpy / torch scalars would not serialise to YAML
        kwargs["metric_value"] = value.item()
    return EvalResult(**kwargs)


def _merge_eval_results(existing: list[EvalResult] | None, new: list[EvalResult]) -> list[EvalResult]:
    """Keep every existing result; a new one replaces an existing one that differs only by value."""
    merged = list(existing or [])
    for result in new:
        for i, old in enumerate(merged):
            if old.is_equal_except_value(result):
                merged[i] = result
                break
        else:
            merged.append(result)
    return merged


def _load_card(path: Path) -> ModelCard | None:
    if not path.is_file():
        return None
    try:
        return ModelCard.load(path)
    except Exception as err:  # a hand-edited card with broken YAML: say so instead of silently dropping it
        raise CheckpointError(f"{path} has metadata that cannot be parsed ({err}); fix or remove its YAML header") from err


def write_model_card(model_dir, *, training_config: dict | None = None, metrics: dict | None = None,
                     data: dict | None = None, loss_curve_png: str | None = None, base_model: str | None = None,
                     extra: dict | None = None) -> Path:
    """Write `model_dir/README.md` from the run's facts and return its path.

    `metrics` may hold `eval_results` (dicts in the `update_model_index` format) for `model-index`; `data["datasets"]`
    also goes into the metadata; `loss_curve_png` is copied next to the card. `extra`: `repo_id` (for the loading
    snippets), `model_name`, `license`, `language`, `tags`, `description`; other keys go under "Other details".
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir} is not a folder; pass the model folder that save_pretrained wrote")
    config = _read_config(model_dir)
    extra = dict(extra or {})
    metrics = dict(metrics or {})
    data = dict(data or {})
    repo_id = extra.pop("repo_id", None) or f"path/to/{model_dir.resolve().name}"
    model_name = extra.pop("model_name", None) or repo_id.split("/")[-1]
    description = extra.pop("description", None)
    tags = ["hfscratch", "text-generation", "causal-lm", "from-scratch"] + list(extra.pop("tags", []) or [])
    if config.get("model_type") and config["model_type"] != "hfscratch":
        tags.append(config["model_type"])

    new_results = [_to_eval_result(r) for r in metrics.pop("eval_results", []) or []]
    previous = _load_card(model_dir / README)
    eval_results = _merge_eval_results(previous and previous.data.eval_results, new_results) or None

    datasets = data.get("datasets") or data.get("dataset")
    if isinstance(datasets, str):
        datasets = [datasets]
    card_data = ModelCardData(
        model_name=model_name, base_model=base_model, eval_results=eval_results, tags=list(dict.fromkeys(tags)),
        datasets=[d for d in datasets if _is_hub_dataset_id(d)] or None if datasets else None,
        library_name="transformers", pipeline_tag="text-generation",
        license=extra.pop("license", None), language=extra.pop("language", None),
    )
    if loss_curve_png:
        source = Path(loss_curve_png)
        if not source.is_file():
            raise ConfigError(f"loss curve image {source} does not exist; pass the PNG the training run wrote")
        target = model_dir / LOSS_CURVE_NAME
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
    eval_rows = [
        (f"{r.task_name or r.task_type} / {r.dataset_name}{f' ({r.dataset_split})' if r.dataset_split else ''}"
         f" / {r.metric_name or r.metric_type}", r.metric_value) for r in eval_results or []
    ]
    n_params = count_parameters(model_dir)
    card = ModelCard.from_template(
        card_data, template_path=CARD_TEMPLATE, config=config, model_name=model_name, description=description,
        n_params=human_count(n_params), model_table=_table(_architecture_rows(config, n_params), ("setting", "value")),
        data_table=data and _table(sorted(data.items())),
        training_yaml=training_config and yaml.safe_dump(_plain(training_config), sort_keys=True),
        results_table=metrics and _table(sorted(metrics.items()), ("metric", "value")),
        eval_table=eval_rows and _table(eval_rows, ("task / dataset / metric", "value")),
        loss_curve=LOSS_CURVE_NAME if loss_curve_png else None, extra_table=extra and _table(sorted(extra.items())),
        repo_id=repo_id, base_model=base_model,
    )
    return write_file_atomically(model_dir / README, f"{card}\n")


def _is_hub_dataset_id(name) -> bool:
    """Hub dataset ids go into the card metadata (linked on the Hub); local paths only into the text."""
    if not isinstance(name, str) or Path(name).expanduser().exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _plain(value):
    """Dataclasses / Paths / tuples -> YAML-safe builtins."""
    if hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def update_model_index(model_dir, eval_results: list[dict]) -> Path:
    """Merge `eval_results` (dicts of EvalResult fields) into the card's `model-index`, replacing a result for the
    same task, dataset and metric; prose and other metadata stay as they are (a folder without a card gets one)."""
    model_dir = Path(model_dir)
    path = model_dir / README
    if not path.is_file():
        write_model_card(model_dir)
    card = _load_card(path)
    card.data.eval_results = _merge_eval_results(card.data.eval_results, [_to_eval_result(r) for r in eval_results])
    if not card.data.model_name:
        card.data.model_name = model_dir.resolve().name
    return write_file_atomically(path, str(card))


__all__ = ["count_parameters", "human_count", "update_model_index", "write_model_card"]
