"""Model cards (README.md) written from what a run knows, with evaluation results as Hub `model-index`.

`write_model_card(folder, ...)` reads the architecture from config.json and counts parameters from the
safetensors headers (no weights are loaded), then adds the data and token counts, the training config,
final metrics, the loss-curve image and how to load the model with and without hfscratch. Results go into
the card's YAML metadata as `model-index` through huggingface_hub's `ModelCardData`/`EvalResult`, so the
Hub shows them in its evaluation widget; entries already in an existing card are kept.

`update_model_index(folder, eval_results)` merges new results into an existing card's metadata and
leaves the prose and the other metadata as they are (the evaluation stage calls it after each run).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .atomic import write_file_atomically
from .errors import CheckpointError, ConfigError

README = "README.md"
LOSS_CURVE_NAME = "loss_curve.png"
# lm-eval is the harness hfscratch evaluates with; the Hub requires a URL next to a source name.
_KNOWN_SOURCES = {"lm-eval": "https://github.com/EleutherAI/lm-evaluation-harness"}
_EVAL_KEYS = ("task_type", "task_name", "dataset_type", "dataset_name", "metric_type", "metric_name", "metric_value")


# ---------------------------------------------------------------------------------------------- reading the run


def _read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir} has no config.json, so it is not a model folder; pass the folder save_pretrained wrote")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); re-save the model with save_pretrained") from err


def count_parameters(model_dir: str | Path) -> int | None:
    """Parameters stored in the folder's safetensors files, read from their headers (tied weights count once)."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                numel = 1
                for dim in handle.get_slice(name).get_shape():
                    numel *= dim
                total += numel
    return total


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
    return "hfscratch (custom mix: " + ", ".join(
        f"{k}={config.get(k)}" for k in ("position_embedding_type", "norm_type", "mlp_type", "qk_norm")
    ) + ")"


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
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    for key, value in rows:
        lines.append(f"| {key} | {_cell(value)} |")
    return "\n".join(lines)


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


# ---------------------------------------------------------------------------------------------- eval results


def _to_eval_result(item: dict | EvalResult) -> EvalResult:
    if isinstance(item, EvalResult):
        return item
    missing = [k for k in ("task_type", "dataset_type", "dataset_name", "metric_type", "metric_value") if item.get(k) is None]
    if missing:
        raise ConfigError(f"eval result {item!r} lacks {', '.join(missing)}; give task_type, dataset_type, dataset_name, metric_type and metric_value")
    known = {f for f in EvalResult.__dataclass_fields__}
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


def _how_to_use(config: dict, repo_id: str) -> str:
    if config.get("model_type") == "hfscratch":
        return f"""## How to use

With hfscratch installed (`pip install hfscratch`), the classes are registered with transformers:

```python
import hfscratch  # registers HfscratchConfig / HfscratchForCausalLM with the Auto classes
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{repo_id}")
tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
```

Without hfscratch, the modeling code shipped in this repository loads through remote code:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
inputs = tokenizer("Once upon a time", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=40)[0]))
```

Chat in the terminal: `hfscratch chat {repo_id}`. Export to the stock {"Qwen3" if config.get("qk_norm") else "Llama"} architecture
(vLLM, TGI, llama.cpp's converter): `hfscratch export ./local-copy ./exported --to {"qwen3" if config.get("qk_norm") else "llama"}`
after `hf download {repo_id} --local-dir ./local-copy`.
"""
    return f"""## How to use

This checkpoint uses the stock `{config.get("model_type")}` architecture of transformers: no remote code is needed.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{repo_id}")
tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
```
"""


def write_model_card(
    model_dir,
    *,
    training_config: dict | None = None,
    metrics: dict | None = None,
    data: dict | None = None,
    loss_curve_png: str | None = None,
    base_model: str | None = None,
    extra: dict | None = None,
) -> Path:
    """Write `model_dir/README.md` from the run's facts and return its path.

    - `training_config`: the run's settings (shown as YAML).
    - `metrics`: final numbers (`{"train_loss": 2.1, "val_bpb": 1.05}`); a key `eval_results` may hold a list of
      dicts in the `update_model_index` format, which become `model-index` entries.
    - `data`: what it was trained on, e.g. `{"datasets": ["HuggingFaceFW/fineweb-edu"], "train_tokens": 1e9}`;
      `datasets` also goes into the card metadata.
    - `loss_curve_png`: a PNG copied next to the card (as loss_curve.png) and shown in it.
    - `base_model`: the model this one was fine-tuned from (card metadata and text).
    - `extra`: `repo_id` (used in the loading snippets), `model_name`, `license`, `language`, `tags`,
      `description`; any other keys are listed under "Other details".
    Entries already in an existing card's `model-index` are kept (new results with the same task, dataset
    and metric replace them).
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
    license_ = extra.pop("license", None)
    language = extra.pop("language", None)

    new_results = [_to_eval_result(r) for r in metrics.pop("eval_results", []) or []]
    previous = _load_card(model_dir / README)
    previous_results = previous.data.eval_results if previous is not None else None
    eval_results = _merge_eval_results(previous_results, new_results) or None

    datasets = data.get("datasets") or data.get("dataset")
    if isinstance(datasets, str):
        datasets = [datasets]
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=[d for d in datasets if _is_hub_dataset_id(d)] or None if datasets else None,
        eval_results=eval_results,
        library_name="transformers",
        pipeline_tag="text-generation",
        license=license_,
        language=language,
        tags=list(dict.fromkeys(tags)),
    )

    n_params = count_parameters(model_dir)
    sections = [f"# {model_name}", ""]
    if description:
        sections += [description, ""]
    origin = f"fine-tuned from [{base_model}](https://huggingface.co/{base_model})" if base_model else "trained from scratch"
    sections += [
        f"A {human_count(n_params)}-parameter decoder-only language model {origin} with "
        "hfscratch, where the training model is a native transformers model.",
        "",
        "## Model",
        "",
        _table(_architecture_rows(config, n_params), ("setting", "value")),
        "",
    ]
    if data:
        sections += ["## Training data", "", _table(sorted(data.items()), ("", "")), ""]
    if training_config:
        sections += ["## Training configuration", "", "```yaml",
                     yaml.safe_dump(_plain(training_config), sort_keys=True, default_flow_style=False).rstrip(), "```", ""]
    if metrics:
        sections += ["## Results", "", _table(sorted(metrics.items()), ("metric", "value")), ""]
    if eval_results:
        rows = [(f"{r.task_name or r.task_type} / {r.dataset_name}" + (f" ({r.dataset_split})" if r.dataset_split else "") +
                 f" / {r.metric_name or r.metric_type}", r.metric_value) for r in eval_results]
        sections += ["## Evaluation", "", _table(rows, ("task / dataset / metric", "value")), ""]
    if loss_curve_png:
        source = Path(loss_curve_png)
        if not source.is_file():
            raise ConfigError(f"loss curve image {source} does not exist; pass the PNG the training run wrote")
        target = model_dir / LOSS_CURVE_NAME
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        sections += ["## Loss curve", "", f"![Training loss curve]({LOSS_CURVE_NAME})", ""]
    sections.append(_how_to_use(config, repo_id))
    if extra:
        sections += ["## Other details", "", _table(sorted(extra.items()), ("", "")), ""]

    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(sections).rstrip() + "\n")
    path = model_dir / README
    write_file_atomically(path, str(card))
    return path


def _is_hub_dataset_id(name) -> bool:
    """Hub dataset ids go into the card metadata (linked on the Hub); local paths only into the text."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

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
        from dataclasses import asdict

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
    """Merge `eval_results` into the card's `model-index`; prose and other metadata stay as they are.

    Each dict: task_type, task_name, dataset_type, dataset_name, metric_type, metric_name, metric_value, and
    optionally dataset_split, dataset_config, source_name (+ source_url). A result for the same task,
    dataset and metric as an existing one replaces it; others are appended. A folder without a README gets
    a generated card first.
    """
    model_dir = Path(model_dir)
    path = model_dir / README
    if not path.is_file():
        write_model_card(model_dir)
    card = _load_card(path)
    new = [_to_eval_result(r) for r in eval_results]
    card.data.eval_results = _merge_eval_results(card.data.eval_results, new)
    if not card.data.model_name:
        card.data.model_name = model_dir.resolve().name
    write_file_atomically(path, str(card))
    return path


__all__ = ["count_parameters", "human_count", "update_model_index", "write_model_card"]
