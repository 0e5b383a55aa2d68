"""Load datasets of common shapes (recognised by their columns, see *_SHAPES; ``column_map`` renames others, and
``synthetic_math`` names the embedded generator) and turn them into TRL's conversational stage formats:
SFT ``messages`` (plain ``prompt``/``completion`` strings kept), DPO ``prompt`` + one-message ``chosen``/``rejected``,
GRPO ``prompt`` + ``answer`` (the verifiable final answer)."""

from __future__ import annotations

import functools
import gzip
import json
import random
import re
from collections import Counter
from pathlib import Path

import datasets

from ..data.synthetic_math import SyntheticMathConfig, generate_problems, to_chat, to_grpo, to_preference
from ..errors import ConfigError, DataError
from .rewards import extract_final_answer

SYNTHETIC = "synthetic_math"
_ALPACA = re.compile(r"### Instruction:\s*(?P<instruction>.*?)\s*(?:### Input:\s*(?P<input>.*?)\s*)?### Response:\s*$", re.S)
_TURN = re.compile(r"\n\n(Human|Assistant):\s?")  # a speaker change in an hh-rlhf transcript
_NO_PAIR = {"prompt": None, "chosen": None, "rejected": None}  # a row the DPO converters drop after their map

SFT_SHAPES = ("messages", "prompt+completion", "prompt+response (Dolly)", "instruction+input+response/output (GPTeacher/Alpaca)",
              "question+answer (GSM8K)")
DPO_SHAPES = ("prompt+chosen+rejected", "chosen+rejected transcripts (hh-rlhf)",
              "instruction+input+response1+response2+annotator1..3 (PandaLM)")
GRPO_SHAPES = ("prompt+answer", "question+answer (GSM8K)", "messages ending with an assistant answer",
               "preference pairs as DPO reads them (prompts only: RLHF against a reward model)")


def _shape_error(name: str, found, stage: str, shapes) -> DataError:
    return DataError(f"dataset {name} has columns {sorted(found)}, but {stage} expects one of: {'; '.join(shapes)}; "
                     "rename columns with dataset_column_map (e.g. --dataset_column_map '{\"query\": \"question\"}')")


def load_raw_dataset(name: str, split: str = "train", config: str | None = None, column_map: dict | None = None):
    """A `datasets.Dataset` from a local file/folder (jsonl, json, json.gz, parquet, csv, save_to_disk) or a Hub id."""
    path = Path(name)
    if path.exists():
        ds = _load_local(path, split)
    elif name.startswith((".", "/", "~")) or name.endswith((".json", ".jsonl", ".parquet", ".csv", ".gz")):
        raise DataError(f"dataset path {name} does not exist; give an existing file/folder or a Hub dataset id")
    else:
        try:
            ds = datasets.load_dataset(name, config, split=split)
        except Exception as err:  # offline, missing repo, bad split: say which and how to fix
            raise DataError(f"could not load Hub dataset {name!r} (split {split!r}): {str(err).splitlines()[0]}; "
                            "check the id/split, or pass a local path when offline") from None
    if column_map:
        if missing := [c for c in column_map if c not in ds.column_names]:
            raise DataError(f"dataset_column_map renames {missing}, which {name} lacks (it has {ds.column_names})")
        ds = ds.rename_columns(dict(column_map))
    if len(ds) == 0:
        raise DataError(f"dataset {name} (split {split}) is empty; point at a file with rows")
    return ds


def _load_local(path: Path, split: str):
    if path.is_dir():
        if any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict) and split not in loaded:
                raise DataError(f"{path} has splits {list(loaded)}, not {split!r}; set dataset_train_split")
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".parquet", ".csv", ".gz"))
        if not files:
            raise DataError(f"folder {path} holds no .jsonl/.json/.parquet/.csv files or save_to_disk dataset")
        return datasets.concatenate_datasets([_load_local(f, split) for f in files])
    if path.suffix in (".parquet", ".csv"):
        return (datasets.Dataset.from_parquet if path.suffix == ".parquet" else datasets.Dataset.from_csv)(str(path))
    if path.suffix in (".json", ".jsonl") or "".join(path.suffixes[-2:]) in (".json.gz", ".jsonl.gz"):
        try:
            return datasets.load_dataset("json", data_files=str(path), split="train")
        except Exception:  # a single JSON array/object that pyarrow's reader rejects: read it ourselves
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path} is not valid JSON/JSON Lines ({err}); fix or re-export the file") from None
            if isinstance(data, dict):
                data = next((v for v in data.values() if isinstance(v, list)), [data])
            return datasets.Dataset.from_list(data)
    raise DataError(f"unsupported dataset file {path}; use .jsonl, .json(.gz), .parquet, .csv or a save_to_disk folder")


def _user_text(instruction: str, extra: str | None) -> str:
    instruction, extra = (instruction or "").strip(), (extra or "").strip()
    return f"{instruction}\n\n{extra}" if extra else instruction


def _user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def _chat(user: str, assistant: str) -> list[dict]:
    return _user(user) + [{"role": "assistant", "content": assistant}]


def _sharegpt_to_messages(turns) -> list[dict]:
    roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
    return [{"role": roles.get(t.get("from", t.get("role")), "user"), "content": t.get("value", t.get("content", ""))} for t in turns]


def to_sft_format(ds, name: str = "dataset"):
    """Dataset with ``messages`` (or prompt/completion strings kept as-is) from any supported SFT shape."""
    cols = set(ds.column_names)
    if "messages" in cols:
        return ds.select_columns(["messages"])
    if "conversations" in cols:
        return ds.map(lambda r: {"messages": _sharegpt_to_messages(r["conversations"])}, remove_columns=ds.column_names)
    if {"prompt", "completion"} <= cols:
        return ds.select_columns(["prompt", "completion"])
    if {"prompt", "response"} <= cols:

        def dolly(row):
            match = _ALPACA.search(row["prompt"])
            user = _user_text(match["instruction"], match["input"]) if match else row["prompt"].strip()
            return {"messages": _chat(user, row["response"].strip())}

        return ds.map(dolly, remove_columns=ds.column_names)
    if "instruction" in cols and cols & {"response", "output"}:
        out = "response" if "response" in cols else "output"
        extra = next((c for c in ("input", "context") if c in cols), None)
        return ds.map(lambda r: {"messages": _chat(_user_text(r["instruction"], r[extra] if extra else None), r[out].strip())},
                      remove_columns=ds.column_names)
    if {"question", "answer"} <= cols:
        return ds.map(lambda r: {"messages": _chat(r["question"].strip(), r["answer"].strip())}, remove_columns=ds.column_names)
    raise _shape_error(name, cols, "SFT", SFT_SHAPES)


def check_assistant_turns(ds, name: str = "dataset") -> None:
    """Every conversation needs an assistant turn for the assistant-only loss; TRL would stop at the first row without
    one with a RuntimeError about chat templates, so this names the rows and the fix up front."""
    if "messages" not in ds.column_names:
        return
    missing = [i for i, messages in enumerate(ds["messages"])
               if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages or [])]
    if not missing:
        return
    roles = [m.get("role") for m in ds[missing[0]]["messages"] or [] if isinstance(m, dict)]
    which = (f"no conversation in {name} has an assistant turn" if len(missing) == len(ds)
             else f"{len(missing)} of {len(ds)} conversations in {name} have no assistant turn")
    raise DataError(f"{which} (first: row {missing[0]}, roles {roles}), so the assistant-only loss has nothing to learn "
                    "from; give every conversation an assistant reply (a message with role \"assistant\") or drop those rows, "
                    "or pass --assistant_only_loss false to train on the whole conversation")


def split_transcript(text: str) -> list[dict]:
    """hh-rlhf transcript ``\\n\\nHuman: ..\\n\\nAssistant: ..`` -> chat messages."""
    parts = _TURN.split(text)
    return [{"role": "user" if speaker == "Human" else "assistant", "content": content.strip()}
            for speaker, content in zip(parts[1::2], parts[2::2])]


def _hh_pair(row):
    chosen, rejected = split_transcript(row["chosen"]), split_transcript(row["rejected"])
    # Both must end with an answer and share the conversation before it.
    if not chosen or not rejected or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant" or rejected[:-1] != chosen[:-1]:
        return _NO_PAIR
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def pandalm_label(row) -> int | None:
    """Majority human label: 1 = response1 better, 2 = response2 better; None for ties and no majority."""
    labels = [row[k] for k in sorted(row) if k.startswith("annotator") and row[k] is not None]
    label, count = Counter(labels).most_common(1)[0] if labels else (None, 0)
    return label if label in (1, 2) and count * 2 > len(labels) else None


def _pandalm_pair(row):
    label = pandalm_label(row)
    if label is None:
        return _NO_PAIR
    # A few PandaLM responses are JSON literals (true/false/numbers), not strings: keep them as their text.
    first, second = ("" if row[k] is None else str(row[k]) for k in ("response1", "response2"))
    good, bad = (first, second) if label == 1 else (second, first)
    return {"prompt": _user(_user_text(row["instruction"], row.get("input"))), "chosen": [{"role": "assistant", "content": good.strip()}],
            "rejected": [{"role": "assistant", "content": bad.strip()}]}


def _is_pandalm(cols) -> bool:
    return {"instruction", "response1", "response2"} <= cols and any(c.startswith("annotator") for c in cols)


def _is_preference(cols) -> bool:
    return {"chosen", "rejected"} <= cols or _is_pandalm(cols)


def _as_messages(value, role: str = "user") -> list[dict]:
    """A prompt or answer as chat messages: lists already are; a plain string is one message of `role`."""
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def to_dpo_format(ds, name: str = "dataset"):
    cols = set(ds.column_names)
    pandalm = _is_pandalm(cols)
    if {"prompt", "chosen", "rejected"} <= cols:
        out = ds.select_columns(["prompt", "chosen", "rejected"])
    elif {"chosen", "rejected"} <= cols or pandalm:
        pair = _hh_pair if {"chosen", "rejected"} <= cols else _pandalm_pair
        out = ds.map(pair, remove_columns=ds.column_names).filter(lambda r: r["prompt"] is not None)
    else:
        raise _shape_error(name, cols, "DPO", DPO_SHAPES)
    if len(out) == 0:
        raise DataError(f"no preference pairs left in {name} after filtering (ties, unmatched transcripts); "
                        "check the file or use another dataset")
    return out


def _gsm8k_answer(answer: str) -> str:
    return extract_final_answer(answer) or answer.strip()


def to_grpo_format(ds, name: str = "dataset", keep_messages: bool = False):
    """Rows of ``prompt`` (messages) + ``answer``; with ``keep_messages`` (the held-out ``eval`` format) also the
    reference solution as ``messages`` when the source has one (a question+answer pair or a conversation)."""
    cols = set(ds.column_names)
    if {"prompt", "answer"} <= cols and not (keep_messages and "question" in cols):
        return ds.map(lambda r: {"prompt": _user(r["prompt"]) if isinstance(r["prompt"], str) else r["prompt"],
                                 "answer": _gsm8k_answer(str(r["answer"]))}, remove_columns=ds.column_names)
    if {"question", "answer"} <= cols:
        return ds.map(lambda r: {"prompt": _user(r["question"].strip()), "answer": _gsm8k_answer(r["answer"]),
                                 **({"messages": _chat(r["question"].strip(), r["answer"].strip())} if keep_messages else {})},
                      remove_columns=ds.column_names)
    if "messages" in cols:
        keep = keep_messages and "prompt" not in cols
        out = ds.filter(lambda r: bool(r["messages"]) and r["messages"][-1]["role"] == "assistant")
        if len(out) == 0:
            raise DataError(f"no rows of {name} end with an assistant answer {'to measure against' if keep_messages else 'to take as the GRPO target'}")
        return out.map(lambda r: {"prompt": r["messages"][:-1], "answer": _gsm8k_answer(r["messages"][-1]["content"]),
                                  **({"messages": r["messages"]} if keep else {})}, remove_columns=ds.column_names)
    if _is_preference(cols):
        # Preference pairs (hh-rlhf, PandaLM, prompt/chosen/rejected): prompts without a verifiable answer, for RLHF
        # against a reward model; the held-out rows keep the preferred reply as the reference answer's messages.
        pairs = to_dpo_format(ds, name)
        return pairs.map(lambda r: {"prompt": _as_messages(r["prompt"]),
                                    **({"messages": _as_messages(r["prompt"]) + _as_messages(r["chosen"], "assistant")}
                                       if keep_messages else {})}, remove_columns=pairs.column_names)
    raise _shape_error(name, cols, "GRPO", GRPO_SHAPES)


def _mixed_flags(n: int, fraction: float, rng: random.Random) -> list[bool]:
    """Exactly round(n * fraction) True values in a seeded random order (a mix that does not drift with n)."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"a synthetic style fraction must be between 0 and 1, got {fraction}")
    flags = [True] * round(n * fraction) + [False] * (n - round(n * fraction))
    rng.shuffle(flags)
    return flags


def synthetic_dataset(stage: str, n: int, split: str = "train", synthetic: SyntheticMathConfig | None = None,
                      restated_fraction: float = 0.0, style_fraction: float = 0.0):
    """The embedded synthetic math set in `stage`'s format (sft | dpo | grpo | eval); see AlignmentDataConfig for the
    two style fractions. DPO rows carry ``pair_kind`` and the verifiable ``answer`` (for held-out exact-match)."""
    synthetic = synthetic or SyntheticMathConfig()
    seed, problems = synthetic.seed, generate_problems(n, split, synthetic)
    if stage == "sft":
        restated = _mixed_flags(len(problems), restated_fraction, random.Random(f"sft-style:{split}:{seed}"))
        rows = [to_chat(p, restated=r) for p, r in zip(problems, restated)]
    elif stage == "dpo":
        rng = random.Random(f"dpo:{split}:{seed}")
        kinds = ["style" if s else "slip" for s in _mixed_flags(len(problems), style_fraction, random.Random(f"dpo-kind:{split}:{seed}"))]
        rows = [{**to_preference(p, rng, kind=kind), "pair_kind": kind, "answer": p["final_answer"]} for p, kind in zip(problems, kinds)]
    elif stage == "grpo":
        rows = [to_grpo(p) for p in problems]
    elif stage == "eval":  # prompt + answer for generation metrics, messages for the reference answer's likelihood
        rows = [{**to_grpo(p), **to_chat(p)} for p in problems]
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return datasets.Dataset.from_list(rows)


def load_stage_dataset(stage: str, name: str, split: str = "train", config: str | None = None, column_map: dict | None = None,
                       max_samples: int | None = None, synthetic_size: int = 2000, synthetic: SyntheticMathConfig | None = None,
                       synthetic_styles: dict | None = None):
    """Load `name` (a path, Hub id or ``synthetic_math``) and convert it to `stage`'s TRL format."""
    if name == SYNTHETIC:
        ds = synthetic_dataset(stage, synthetic_size if max_samples is None else max_samples,
                               split="heldout" if split in ("test", "heldout", "validation") else "train",
                               synthetic=synthetic, **(synthetic_styles or {}))
    else:
        convert = {"sft": to_sft_format, "dpo": to_dpo_format, "grpo": to_grpo_format,
                   "eval": functools.partial(to_grpo_format, keep_messages=True)}[stage]
        ds = convert(load_raw_dataset(name, split, config, column_map), name)
        if max_samples is not None:
            ds = ds.select(range(min(max_samples, len(ds))))
    if len(ds) == 0:
        raise DataError(f"dataset {name} is empty after conversion/filtering; use another split or file")
    return ds
