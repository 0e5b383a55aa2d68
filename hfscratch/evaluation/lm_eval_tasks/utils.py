"""Dataset loaders for the offline (`*_local`) lm-eval task copies in this folder (their YAMLs' `custom_dataset`).

lm-eval calls them with the task's metadata (`data_dir`, else $HFSCRATCH_EVAL_DATA) plus the YAML's `dataset_kwargs`.
The folder layout is shared/data's: `gsm8k/{train,test}.jsonl`, `hellaswag/hellaswag_val_full.txt.bz2`,
`eval-icl/<name>.jsonl` (MosaicML Eval Gauntlet); rows get the field names lm-eval's templates read.
Must not need hfscratch: lm-eval imports it by path, also where hfscratch is not installed.
"""

from __future__ import annotations

import bz2
import functools
import json
import os
import re
from pathlib import Path

import datasets

try:  # inside hfscratch the CLI prints this as one line; standalone it is still a FileNotFoundError
    from hfscratch.errors import DataError as _DataErrorBase
except ImportError:  # pragma: no cover - exercised in the trust_remote_code subprocess test
    _DataErrorBase = FileNotFoundError

DATA_ENV_VAR = "HFSCRATCH_EVAL_DATA"


class LocalEvalDataError(_DataErrorBase):
    """A local eval data folder or file that is missing or not in the expected format."""


# file (relative to the data folder) -> the format lm-eval's local tasks expect in it (for error messages)
EXPECTED_FORMATS = {
    "gsm8k/train.jsonl": "JSON Lines with `question` and `answer` (worked solution ending in '#### <number>')",
    "gsm8k/test.jsonl": "JSON Lines with `question` and `answer` (worked solution ending in '#### <number>')",
    "hellaswag/hellaswag_val_full.txt.bz2": "bzip2 text, 6 lines per item: context, gold index 0-3, four endings",
    "eval-icl/arc_easy.jsonl": "JSON Lines with `query`, `choices` (list of str), `gold` (int)",
    "eval-icl/arc_challenge.jsonl": "JSON Lines with `query`, `choices` (list of str), `gold` (int)",
    "eval-icl/piqa.jsonl": "JSON Lines with `query`, `choices` (2 str), `gold` (int)",
    "eval-icl/boolq.jsonl": "JSON Lines with `query` ('Passage: ...\\nQuestion: ...?'), `choices`, `gold`",
    "eval-icl/openbook_qa.jsonl": "JSON Lines with `query`, `choices` (4 str), `gold` (int)",
    "eval-icl/winogrande.jsonl": "JSON Lines with `context_options` (2 str), `continuation` (str), `gold` (int)",
    "eval-icl/lambada_openai.jsonl": "JSON Lines with `context` (str) and `continuation` (the last word)",
}


def required_data_dir(data_dir: str | os.PathLike | None) -> Path:
    chosen = data_dir or os.environ.get(DATA_ENV_VAR)
    if not chosen:
        raise LocalEvalDataError(f"the *_local eval tasks need a data folder: pass --data_dir DIR (lm_eval: "
                                 f"--metadata '{{\"data_dir\": \"DIR\"}}') or set ${DATA_ENV_VAR}; DIR holds "
                                 "gsm8k/, hellaswag/ and eval-icl/ as in shared/data")
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise LocalEvalDataError(f"eval data folder {path} does not exist; pass --data_dir or ${DATA_ENV_VAR} pointing at it")
    return path


def data_file(data_dir: str | os.PathLike | None, relative: str) -> Path:
    path = required_data_dir(data_dir) / relative
    if not path.is_file():
        raise LocalEvalDataError(f"missing eval data file {path}; expected "
                                 f"{EXPECTED_FORMATS.get(relative, 'the shared/data layout')} "
                                 f"(copy it from shared/data/{relative} or fix --data_dir)")
    return path


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise LocalEvalDataError(f"{path}:{line_no} is not valid JSON ({err.msg}); expected one JSON object per line") from None
            missing = [key for key in required if key not in row]
            if missing:
                raise LocalEvalDataError(f"{path}:{line_no} lacks field(s) {missing}; expected fields {list(required)}")
            rows.append(row)
    if not rows:
        raise LocalEvalDataError(f"{path} holds no rows; expected JSON Lines with fields {list(required)}")
    return rows


_CACHE: dict[tuple, datasets.DatasetDict] = {}


def _cached(loader):
    """Reuse a parsed dataset while its file is unchanged: the in-training eval reloads tasks every N steps."""

    @functools.wraps(loader)
    def wrapper(data_dir: str | None = None, **kwargs):
        folder = required_data_dir(data_dir)
        stamp = tuple(sorted((str(p), p.stat().st_mtime_ns) for sub in ("gsm8k", "hellaswag", "eval-icl")
                             for p in (folder / sub).glob("*") if p.is_file()))
        key = (loader.__name__, str(folder), tuple(sorted((k, str(v)) for k, v in kwargs.items() if k in ("file", "split", "strip_prefix"))), stamp)
        if key not in _CACHE:
            _CACHE[key] = loader(str(folder), **kwargs)
        return _CACHE[key]

    return wrapper


@_cached
def load_gsm8k(data_dir: str | None = None, **_metadata) -> datasets.DatasetDict:
    """openai/grade-school-math JSONL: the same rows, order and fields as the Hub's `openai/gsm8k` `main`."""
    splits = {}
    for split in ("train", "test"):
        rows = _read_jsonl(data_file(data_dir, f"gsm8k/{split}.jsonl"), ("question", "answer"))
        splits[split] = datasets.Dataset.from_list([{"question": r["question"], "answer": r["answer"]} for r in rows])
    return datasets.DatasetDict(splits)


def _hellaswag_clean(text: str) -> str:
    # lm-eval's hellaswag preprocessing; the llama.cpp text export already did most of it, this makes the rest match
    return re.sub("\\[.*?\\]", "", text.strip().replace(" [title]", ". ")).replace("  ", " ")


@_cached
def load_hellaswag(data_dir: str | None = None, **_metadata) -> datasets.DatasetDict:
    """klosax/hellaswag_text_data: 6 lines per item (context, gold index, four endings) -> query/choices/label."""
    path = data_file(data_dir, "hellaswag/hellaswag_val_full.txt.bz2")
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or len(lines) % 6:
        raise LocalEvalDataError(f"{path} has {len(lines)} lines, not a multiple of 6; expected {EXPECTED_FORMATS['hellaswag/hellaswag_val_full.txt.bz2']}")
    rows = []
    for start in range(0, len(lines), 6):
        label = lines[start + 1].strip()
        if label not in {"0", "1", "2", "3"}:
            raise LocalEvalDataError(f"{path}:{start + 2} should be the gold index 0-3, got {label[:40]!r}")
        choices = [_hellaswag_clean(e) for e in lines[start + 2:start + 6]]
        rows.append({"query": _hellaswag_clean(lines[start]), "choices": choices, "label": int(label)})
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})


@_cached
def load_icl_multiple_choice(data_dir: str | None = None, file: str = "", split: str = "test",
                             strip_prefix: str = "", **_metadata) -> datasets.DatasetDict:
    """Eval-Gauntlet multiple choice JSONL (`query`, `choices`, `gold`) -> query/choices/label."""
    rows = _read_jsonl(data_file(data_dir, f"eval-icl/{file}"), ("query", "choices", "gold"))
    out = [{"query": r["query"].rstrip().removeprefix(strip_prefix), "choices": list(r["choices"]),
            "label": int(r["gold"])} for r in rows]
    return datasets.DatasetDict({split: datasets.Dataset.from_list(out)})


@_cached
def load_winogrande(data_dir: str | None = None, **_metadata) -> datasets.DatasetDict:
    rows = _read_jsonl(data_file(data_dir, "eval-icl/winogrande.jsonl"), ("context_options", "continuation", "gold"))
    out = [{"options": list(r["context_options"]), "continuation": r["continuation"].strip(), "label": int(r["gold"])} for r in rows]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(out)})


@_cached
def load_lambada(data_dir: str | None = None, **_metadata) -> datasets.DatasetDict:
    rows = _read_jsonl(data_file(data_dir, "eval-icl/lambada_openai.jsonl"), ("context", "continuation"))
    out = [{"context": r["context"], "continuation": r["continuation"]} for r in rows]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(out)})
