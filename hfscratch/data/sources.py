"""Reading raw text: local files, folders, globs and Hub datasets, as plain `{"text", "id", "source"}` dicts.

Local formats (text/json optionally `.gz`/`.bz2`/`.zst`): `.txt`/`.text`/`.md` (one document per file, blank-line
separated paragraph or non-empty line: `txt_mode`), `.jsonl`/`.ndjson`, `.json` (an array, or JSON Lines), `.parquet`
and `Dataset.save_to_disk` folders. Anything else shaped like `owner/name[:config][@split]` (or `hf:owner/name`) is
a Hub dataset, streamed through datatrove's `HuggingFaceDatasetReader`, so corpora larger than disk or RAM work.

Undecodable bytes never stop a run: they are removed, counted per file and reported. Missing paths, unsupported
extensions and sources without any text raise a one-line `DataError`.
"""

from __future__ import annotations

import glob as globlib
import itertools
import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers import HuggingFaceDatasetReader, ParquetReader
from datatrove.pipeline.readers.base import BaseReader
from tqdm.auto import tqdm

from hfscratch.data.compressed import (
    COMPRESSION_SUFFIXES,
    DAMAGED_ARCHIVE_ERRORS,
    READ_CHUNK_BYTES,
    is_damaged_archive,
    open_binary,
)
from hfscratch.errors import DataError

logger = logging.getLogger("hfscratch.data")

FORMAT_SUFFIXES = {".txt": "txt", ".text": "txt", ".md": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
                   ".parquet": "parquet"}
TXT_MODES = ("file", "paragraph", "line")
SUPPORTED_HINT = ".txt, .jsonl, .json, .parquet (text/json optionally .gz/.bz2/.zst)"
DATASET_KINDS = ("hub", "saved")  # read through datatrove's HuggingFaceDatasetReader, sharded by rank

# `owner/name`, optionally `:config` and `@split`; a local path that does not exist never gets here if it has a
# file extension we know, starts with `/`, `.` or `~`, or contains glob characters.
_HUB_ID = re.compile(r"^(?:hf:)?[A-Za-z0-9][\w.-]*/[\w.-]+(?::[\w.-]+)?(?:@[\w.\[\]:%+-]+)?$")
_GLOB_CHARS = re.compile(r"[*?\[]")
_ESCAPED_BYTES = re.compile("[\udc80-\udcff]")


def file_format(path: str | Path) -> str | None:
    """The reader kind for a file name (`txt`, `jsonl`, `json`, `parquet`), or None when unsupported."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
        if suffixes and suffixes[-1] == ".parquet":
            return None  # parquet compresses its own pages; a compressed parquet file is a mistake
    return FORMAT_SUFFIXES.get(suffixes[-1]) if suffixes else None


def _folder_files(folder: Path) -> list[tuple[str, str]]:
    files = (f for f in sorted(folder.rglob("*"))
             if f.is_file() and not any(part.startswith(".") for part in f.relative_to(folder).parts))
    return [(kind, str(f)) for f in files if (kind := file_format(f))]


def resolve_sources(sources: list[str] | str) -> list[tuple[str, str]]:
    """Expand sources into `(kind, path_or_id)` pairs; kind is txt|jsonl|json|parquet|saved|hub.

    Folders are searched recursively (hidden files skipped), globs expanded (`**` works). Raises DataError for a
    missing path, an unsupported file, an empty folder/glob or an empty source list.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    if not sources:
        raise DataError("no data sources given; pass at least one file, folder, glob or Hub dataset id")
    resolved: list[tuple[str, str]] = []
    for source in sources:
        text = str(source)
        path = Path(text).expanduser()
        if text.startswith("hf:"):
            resolved.append(("hub", text[3:]))
        elif path.is_file():
            if (kind := file_format(path)) is None:
                raise DataError(f"unsupported file type: {text}; convert it to one of {SUPPORTED_HINT} or pass a "
                                "folder of such files")
            resolved.append((kind, str(path)))
        elif path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
            resolved.append(("saved", str(path)))  # a Dataset(Dict).save_to_disk folder
        elif path.is_dir():
            if not (files := _folder_files(path)):
                raise DataError(f"folder {text} holds no supported files; put {SUPPORTED_HINT} files in it")
            resolved.extend(files)
        elif _GLOB_CHARS.search(text):
            matches = [Path(m) for m in sorted(globlib.glob(str(path), recursive=True))]
            files = [(file_format(m), str(m)) for m in matches if m.is_file() and file_format(m)]
            if not files:
                raise DataError(f"glob {text} matches no supported files; check the pattern ({SUPPORTED_HINT})")
            resolved.extend(files)
        elif _HUB_ID.match(text) and file_format(text) is None and not text.startswith((".", "/", "~")):
            resolved.append(("hub", text))
        else:
            raise DataError(f"data source not found: {text}; pass an existing file, folder, glob (e.g. 'data/*.txt') "
                            "or a Hub dataset id ('owner/name')")
    return list(dict.fromkeys(resolved))  # the same file named twice (a folder and a glob inside it) is read once


def decode_counting(raw: bytes) -> tuple[str, int]:
    """UTF-8 decode `raw`, dropping undecodable bytes; returns (text, number of bytes dropped).

    `surrogateescape` maps each bad byte to one lone surrogate (U+DC80..U+DCFF), which valid UTF-8 never produces,
    so counting and removing those is exact.
    """
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        return _ESCAPED_BYTES.subn("", raw.decode("utf-8", errors="surrogateescape"))


def _read_text(path: str, counters: dict) -> tuple[str, int]:
    chunks = []
    with open_binary(path) as handle:
        try:
            while chunk := handle.read(READ_CHUNK_BYTES):
                chunks.append(chunk)
        except DAMAGED_ARCHIVE_ERRORS as error:
            if not is_damaged_archive(error):
                raise
            counters["truncated_files"] += 1
    return decode_counting(b"".join(chunks))


def _read_lines(path: str, counters: dict) -> Iterator[tuple[int, str]]:
    with open_binary(path) as handle:
        lines = enumerate(handle)
        while True:
            try:
                number, raw = next(lines)
            except StopIteration:
                return
            except DAMAGED_ARCHIVE_ERRORS as error:
                if not is_damaged_archive(error):
                    raise
                counters["truncated_files"] += 1
                return
            line, dropped = decode_counting(raw)
            counters["undecodable_bytes"] += dropped
            yield number, line


def _iter_txt(path: str, txt_mode: str, counters: dict) -> Iterator[tuple[str, str]]:
    if txt_mode == "file":
        text, dropped = _read_text(path, counters)
        counters["undecodable_bytes"] += dropped
        yield text, path
    elif txt_mode == "line":
        for number, line in _read_lines(path, counters):
            yield line.rstrip("\r\n"), f"{path}#{number}"
    else:  # paragraph: lines are streamed so a huge file never sits in memory at once
        groups = itertools.groupby(_read_lines(path, counters), key=lambda item: bool(item[1].strip()))
        paragraphs = (lines for has_text, lines in groups if has_text)
        for index, lines in enumerate(paragraphs):
            yield "".join(line for _, line in lines).rstrip("\r\n"), f"{path}#{index}"


def iter_records(path: str, kind: str, counters: dict | None = None) -> Iterator[tuple[int, object]]:
    """`(index, parsed JSON value)` of a .jsonl file or a .json array (other .json files are read as JSON Lines).

    Unparsable lines count as bad_records. Not datatrove's JsonlReader: it reads in text mode, so one undecodable
    byte silently loses the rest of the file; and it cannot read a JSON array.
    """
    counters = _new_counters() if counters is None else counters
    if kind == "json":
        content, dropped = _read_text(path, counters)
        if content.lstrip().startswith("["):
            counters["undecodable_bytes"] += dropped
            try:
                records = json.loads(content)
            except json.JSONDecodeError as error:
                raise DataError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}); fix or re-export it") from None
            yield from enumerate(records)
            return
    for number, line in _read_lines(path, counters):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                counters["bad_records"] += 1
                continue
            yield number, record


def _iter_record_texts(path: str, kind: str, text_field: str, counters: dict) -> Iterator[tuple[str, str]]:
    for index, record in iter_records(path, kind, counters):
        value = record.get(text_field) if isinstance(record, dict) else None
        if isinstance(value, str):
            doc_id = record.get("id")
            yield value, str(doc_id) if isinstance(doc_id, (str, int)) else f"{path}#{index}"
        elif isinstance(record, dict) and value is None:
            counters["missing_field"] += 1
            counters.setdefault("keys_seen", sorted(record.keys())[:20])
        else:
            counters["bad_records"] += 1


def _iter_parquet(path: str, text_field: str, counters: dict) -> Iterator[tuple[str, str]]:
    try:
        columns = pq.read_schema(path).names
    except Exception as error:  # noqa: BLE001 - any pyarrow failure means the same thing to the user
        raise DataError(f"cannot read parquet file {path} ({error}); check that it is a complete parquet file") from None
    if text_field not in columns:
        counters["missing_field"] += 1
        counters.setdefault("keys_seen", columns[:20])
        return
    reader = ParquetReader(str(Path(path).parent), text_key=text_field, read_metadata=False)
    for document in reader.read_file(Path(path).name):
        yield document.text, str(document.id)


def _iter_dataset(spec: str, text_field: str, saved: bool, rank: int = 0, world_size: int = 1) -> Iterator[tuple[str, str]]:
    if saved:
        reader = HuggingFaceDatasetReader(spec, load_from_disk=True, text_key=text_field)
    else:
        name, _, split = spec.partition("@")
        name, _, config = name.partition(":")
        options = {"split": split or "train", **({"name": config} if config else {})}
        reader = HuggingFaceDatasetReader(name, dataset_options=options, streaming=True, text_key=text_field)
    try:
        for document in reader.run(rank=rank, world_size=world_size):
            yield document.text, str(document.id)
    except Exception as error:  # noqa: BLE001 - datasets raises many types for "cannot get this dataset"
        where, fix = ("saved dataset folder", "check the folder was written by Dataset.save_to_disk") if saved else (
            "Hub dataset", "check the id, your network (HF_HUB_OFFLINE must be unset) and `owner/name:config@split`")
        message = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise DataError(f"cannot read {where} {spec} ({message}); {fix}") from None


def iter_source_texts(kind: str, path: str, text_field: str = "text", txt_mode: str = "file",
                      counters: dict | None = None, rank: int = 0, world_size: int = 1) -> Iterator[tuple[str, str]]:
    """Yield `(text, id)` for one resolved source; `counters` collects undecodable_bytes, missing_field, ...

    `rank`/`world_size` only shard Hub and saved datasets (the caller shards files).
    """
    counters = _new_counters() if counters is None else counters
    if kind == "txt":
        yield from _iter_txt(path, txt_mode, counters)
    elif kind in ("jsonl", "json"):
        yield from _iter_record_texts(path, kind, text_field, counters)
    elif kind == "parquet":
        yield from _iter_parquet(path, text_field, counters)
    elif kind in DATASET_KINDS:
        yield from _iter_dataset(path, text_field, saved=kind == "saved", rank=rank, world_size=world_size)
    else:
        raise DataError(f"unknown source kind {kind!r} for {path}; use one of txt, jsonl, json, parquet, saved, hub")


def _new_counters() -> dict:
    return {"undecodable_bytes": 0, "missing_field": 0, "bad_records": 0, "empty": 0, "truncated_files": 0,
            "oversized": 0, "largest_oversized_bytes": 0}


def check_txt_mode(txt_mode: str) -> None:
    if txt_mode not in TXT_MODES:
        raise DataError(f"unknown txt_mode {txt_mode!r}; use one of {', '.join(TXT_MODES)}")


def utf8_size_over(text: str, cap: int) -> int | None:
    """The UTF-8 size of `text` when it is over `cap` bytes, else None. A character is 1-4 bytes, so short texts
    are never encoded; lone surrogates (possible from JSON escapes) count 3 bytes each."""
    if len(text) * 4 <= cap:
        return None
    size = len(text) if text.isascii() else len(text.encode("utf-8", errors="surrogatepass"))
    return size if size > cap else None


def _within_size(texts: Iterable[tuple[str, str]], counters: dict, cap: int | None) -> Iterator[tuple[str, str]]:
    """The `(text, id)` pairs of at most `cap` UTF-8 bytes (None = all); larger ones are counted as oversized."""
    for text, doc_id in texts:
        if cap is not None and (size := utf8_size_over(text, cap)) is not None:
            counters["oversized"] += 1
            counters["largest_oversized_bytes"] = max(counters["largest_oversized_bytes"], size)
            continue
        yield text, doc_id


def _nonblank(texts: Iterable[tuple[str, str]], counters: dict, room: int | None) -> Iterator[tuple[str, str]]:
    """The non-blank `(text, id)` pairs of `texts`, at most `room` of them (None = no cap); blank ones are counted."""

    def nonblank():
        for text, doc_id in texts:
            if text.strip():
                yield text, doc_id
            else:
                counters["empty"] += 1

    return itertools.islice(nonblank(), None if room is None else max(room, 0))


def iter_documents(sources: list[str], text_field: str = "text", txt_mode: str = "file", limit: int | None = None,
                   stats: dict | None = None, progress: bool = False) -> Iterator[dict]:
    """Yield `{"text", "id", "source"}` for every non-blank document in `sources`, in order, at most `limit`.

    A `stats` dict is filled with files, documents, undecodable_bytes, bad_records and empty (blank documents).
    A source that yields no document raises DataError (naming a wrong `text_field` when that is the cause).
    """
    check_txt_mode(txt_mode)
    if isinstance(sources, (str, Path)):
        sources = [sources]
    # resolve everything first so a typo in the last source fails before any work is done
    per_source = [(str(source), resolve_sources([source])) for source in sources] if sources else resolve_sources([])
    totals = stats if stats is not None else {}
    for key in ("files", "documents", "undecodable_bytes", "bad_records", "empty", "truncated_files"):
        totals.setdefault(key, 0)
    produced = 0
    with tqdm(total=sum(len(r) for _, r in per_source), unit="file", desc="reading", disable=not progress) as bar:
        for source, resolved in per_source:
            found_in_source = 0
            counters = _new_counters()
            for kind, path in resolved:
                before = dict(counters)
                texts = iter_source_texts(kind, path, text_field, txt_mode, counters)
                for text, doc_id in _nonblank(texts, counters, None if limit is None else limit - produced):
                    found_in_source += 1
                    produced += 1
                    totals["documents"] += 1
                    yield {"text": text, "id": doc_id, "source": path}
                totals["files"] += 1
                for key, what in (("undecodable_bytes", "undecodable bytes (not UTF-8)"),
                                  ("bad_records", "records that are not JSON objects with text"), ("empty", None),
                                  ("truncated_files", "the rest of a truncated or corrupt compressed file")):
                    totals[key] += (added := counters[key] - before[key])
                    if added and what:
                        logger.warning("%s: skipped %d %s", path, added, what)
                bar.update()
                if limit is not None and produced >= limit:
                    return
            if found_in_source == 0:
                if counters["missing_field"]:
                    raise DataError(f"no documents in {source}: records have no {text_field!r} field (fields seen: "
                                    f"{counters.get('keys_seen', [])}); set text_field to the field holding the text")
                raise DataError(f"no documents in {source}: it is empty or holds only blank text; point to a file with text")


def files_of_task(files: list[tuple[str, str]], rank: int, world_size: int) -> list[tuple[str, str]]:
    """The files task `rank` reads: largest first to the task with the fewest bytes so far (ties: lowest rank), kept in
    listing order. Tasks run in parallel and a stage lasts as long as its longest task: with i % world_size, the
    10-book benchmark set split 4.1 MB / 2.4 MB over 2 tasks, by size it splits 3.2 / 3.3."""
    sizes = [Path(path).stat().st_size if Path(path).is_file() else 0 for _, path in files]
    loads = [0] * world_size
    owner = [0] * len(files)
    for index in sorted(range(len(files)), key=lambda i: -sizes[i]):  # stable: equal sizes keep listing order
        task = loads.index(min(loads))
        owner[index] = task
        loads[task] += sizes[index]
    return [item for item, task in zip(files, owner) if task == rank]


class SourceReader(BaseReader):
    """Datatrove reader over `resolve_sources(sources)`: files spread over tasks by size (`files_of_task`);
    Hub/saved datasets are sharded by `HuggingFaceDatasetReader` in every task.

    No single datatrove reader handles a mix of txt, jsonl, json arrays, parquet and Hub ids, nor counts
    undecodable bytes instead of aborting a file.
    """

    name = "📂 hfscratch sources"

    def __init__(self, sources: list[str], text_field: str = "text", txt_mode: str = "file", limit: int = -1,
                 file_progress: bool = True, max_doc_bytes: int | None = None):
        super().__init__(limit=limit)
        check_txt_mode(txt_mode)
        self.sources = [str(s) for s in sources]
        self.max_doc_bytes = max_doc_bytes  # larger documents are skipped and counted as oversized
        self.text_field = text_field
        self.txt_mode = txt_mode
        self.file_progress = file_progress

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        resolved = resolve_sources(self.sources)
        my_files = files_of_task([item for item in resolved if item[0] not in DATASET_KINDS], rank, world_size)
        datasets_ = [item for item in resolved if item[0] in DATASET_KINDS]
        produced = 0
        with tqdm(total=len(my_files), unit="file", desc=f"read task {rank}", disable=not self.file_progress) as bar:
            for kind, path in my_files + datasets_:
                counters = _new_counters()
                texts = iter_source_texts(kind, path, self.text_field, self.txt_mode, counters, rank, world_size)
                texts = _within_size(texts, counters, self.max_doc_bytes)
                for text, doc_id in _nonblank(texts, counters, None if self.limit == -1 else self.limit - produced):
                    produced += 1
                    document = Document(text=text, id=doc_id, metadata={"source": path})
                    self.update_doc_stats(document)
                    yield document
                for key in ("undecodable_bytes", "bad_records", "empty", "missing_field", "truncated_files",
                            "oversized"):
                    if counters[key]:
                        self.stat_update(key, value=counters[key])
                if counters["oversized"]:
                    logger.warning("%s: skipped %d document(s) over max_doc_bytes=%d (largest %d bytes); raise "
                                   "cleaning.max_doc_bytes to keep them", path, counters["oversized"],
                                   self.max_doc_bytes, counters["largest_oversized_bytes"])
                if counters["undecodable_bytes"]:
                    logger.warning("%s: skipped %d undecodable bytes", path, counters["undecodable_bytes"])
                if counters["truncated_files"]:
                    logger.warning("%s: truncated or corrupt compressed file; kept the text before the damage", path)
                if kind not in DATASET_KINDS:
                    bar.update()
                    self.stat_update("input_files")
