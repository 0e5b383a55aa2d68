"""Eval sets for benchmark decontamination: read local eval files into items and build the N-gram index that
`EvalOverlapFilter` (datatrove's `NGramsDecontFilter`) matches documents against."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.decont import NGramsDecontConfig
from datatrove.utils.word_tokenizers import WordTokenizer

from hfscratch.data.sources import iter_records, iter_source_texts, resolve_sources
from hfscratch.errors import DataError

from .steps import LocalEvalIndexer


def _record_strings(record, fields: list[str] | None) -> list[str]:
    if not isinstance(record, dict):
        return [record] if isinstance(record, str) else []
    keys = fields if fields is not None else list(record)
    out = []
    for key in keys:
        value = record.get(key)
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            out.extend(v for v in value if isinstance(v, str))
    return out


def _task_name(path: Path) -> str:
    stem = path.name
    for suffix in reversed(path.suffixes):
        stem = stem.removesuffix(suffix)
    return re.sub(r"[^\w.-]+", "_", f"{path.parent.name}_{stem}" if path.parent.name else stem)


def iter_eval_items(eval_files: list[str], fields: list[str] | None = None) -> Iterable[Document]:
    """One Document per eval string: each configured (or every) string field of a jsonl/json record, or each
    blank-line separated block of a plain text file. metadata['task'] = '<folder>_<file stem>'."""
    for kind, path in resolve_sources(eval_files):
        if kind not in ("txt", "jsonl", "json"):
            raise DataError(f"eval set {path} is {kind}; give decontamination sets as .jsonl/.json (fields) or plain text files")
        task = _task_name(Path(path))
        if kind == "txt":
            texts = (text for text, _ in iter_source_texts("txt", path, txt_mode="paragraph"))
        else:
            texts = (text for _, record in iter_records(path, kind) for text in _record_strings(record, fields))
        produced = 0
        for produced, text in enumerate(texts, 1):
            yield Document(text=text, id=f"{task}/{produced}", metadata={"task": task})
        if produced == 0:
            wanted = f"fields {fields}" if fields else "string fields"
            raise DataError(f"eval set {path} has no {wanted}; check decontamination_fields")


def build_decontamination_index(eval_files: list[str], index_dir: str | Path, ngram: int = 13,
                                fields: list[str] | None = None, language: str | WordTokenizer = "en") -> dict[str, int]:
    """Write `<task>.index.hashes` for every eval file; returns {task: number of distinct N-grams}. `language` is
    datatrove's: a language code or a `WordTokenizer` (the pipeline passes the one its blocks use)."""
    config = NGramsDecontConfig(n_grams=ngram, find_query_ngrams=True)
    indexer = LocalEvalIndexer(index_dir, config, language=language)
    counts = indexer.run(iter_eval_items(eval_files, fields))
    empty = [task for task, count in counts.items() if count == 0]
    if empty:
        raise DataError(f"eval sets {empty} have no {ngram}-gram (items shorter than {ngram} words); lower decontamination_ngram")
    return counts
