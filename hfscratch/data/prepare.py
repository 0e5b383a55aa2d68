"""The data stage end to end: sources → (datatrove cleaning) → tokenizer → packed blocks, cached on disk.

`prepare_data(DataConfig())` writes `<output_root>/<name>/`: `clean/` (*.jsonl.gz + stats.json, the tokenizer's
training corpus), `tokenizer/` (save_pretrained), `packed/` (DatasetDict train/validation of input_ids +
position_ids) and `manifest.json` (config, sources, tokenizer sha256, stats, token and byte counts).

Caching: the manifest stores per-stage fingerprints of everything that decides the output (relevant config fields,
each source file's size and mtime, a reused tokenizer's hash): all equal → the folder is reused; otherwise it is
rebuilt, carrying stages whose own inputs did not change over from the previous build by hard link.
A build happens in a hidden sibling temp folder renamed into place when complete, so a killed run never leaves a
folder that looks valid.

Cleaning runs on the natural-text `sources` only: the synthetic math corpus is generated clean, and web-text quality
filters (Gopher word-length/symbol ratios) would throw away its equations.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, load_from_disk
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from hfscratch.errors import ConfigError, DataError
from hfscratch.tokenizer import (
    bytes_per_token,
    check_vocab_size,
    ensure_chat_template,
    load_tokenizer,
    tokenizer_fingerprint,
    train_tokenizer,
)

from . import pack  # used as pack.pack_dataset etc., so a test can replace a packing step on the module
from .clean import clean_corpus
from .config import DataConfig
from .sources import iter_documents, resolve_sources
from .synthetic_math import iter_problems, problem_to_text

FORMAT_VERSION = "hfscratch-data/1"
SYNTHETIC_FILE = "synthetic_math.jsonl.gz"
# Held-out documents for bytes/token: every Nth document is kept out of tokenizer training.
HELD_OUT_EVERY = 20
HELD_OUT_MAX_CHARS = 2_000_000
# Marks a folder as ours (so a rebuild may replace it) even when its manifest is missing after a crash.
MARKER = ".hfscratch-data"


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset
    validation: Any  # datasets.Dataset
    tokenizer: Any  # PreTrainedTokenizerFast
    tokenizer_dir: Path
    manifest: dict
    root: Path
    reused: bool = False

    @property
    def packed_dir(self) -> Path:
        return self.root / "packed"


def _sha256_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _describe_sources(sources: list[str]) -> list[dict]:
    """Size and mtime of every file each source expands to (Hub ids are recorded by name)."""
    described = []
    for source in sources:
        for kind, path in resolve_sources([source]):
            entry = {"source": source, "kind": kind, "path": path}
            target = Path(path)
            if kind != "hub" and target.exists():
                files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
                entry["bytes"] = sum(p.stat().st_size for p in files)
                entry["mtime_ns"] = max((p.stat().st_mtime_ns for p in files), default=0)
            described.append(entry)
    return described


def _tokenizer_source_hash(path: str) -> str:
    folder = Path(path)
    if not folder.is_dir():
        return f"hub:{path}"  # a Hub id: the name is all we know without a network call
    digest = hashlib.sha256()
    for name in sorted(p.name for p in folder.iterdir() if p.is_file() and ("token" in p.name or p.suffix == ".jinja")):
        digest.update(name.encode())
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()


def _stage_keys(config: DataConfig, sources: list[dict], clean_options: dict) -> dict[str, str]:
    corpus_key = _sha256_json({
        "version": FORMAT_VERSION, "sources": sources, "text_field": config.text_field, "txt_mode": config.txt_mode,
        "max_documents": config.max_documents, "clean": config.clean and bool(config.sources),
        "clean_options": clean_options,
        "synthetic": {"problems": config.synthetic_problems, **dataclasses.asdict(config.synthetic)},
    })
    tokenizer = {
        "corpus": corpus_key, "vocab_size": config.vocab_size, "min_frequency": config.min_frequency,
        "tokenizer_max_chars": config.tokenizer_max_chars, "tokenizer_path": config.tokenizer_path,
        "tokenizer_path_hash": _tokenizer_source_hash(config.tokenizer_path) if config.tokenizer_path else None,
    }
    if config.tokenizer_path:  # a reused tokenizer does not depend on the corpus
        tokenizer = {k: tokenizer[k] for k in ("tokenizer_path", "tokenizer_path_hash")}
    tokenizer_key = _sha256_json(tokenizer)
    packed = {"corpus": corpus_key, "tokenizer": tokenizer_key, **{
        k: getattr(config, k) for k in ("block_size", "add_bos", "drop_remainder", "validation_fraction", "split_seed")}}
    return {"corpus": corpus_key, "tokenizer": tokenizer_key, "packed": _sha256_json(packed)}


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _check_root_is_ours(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} exists and is a file; choose another name/output_root")
    if root.is_dir() and any(root.iterdir()) and _read_manifest(root) is None and not (root / MARKER).exists():
        raise DataError(f"{root} exists, is not empty and was not written by hfscratch; choose another name or "
                        "output_root (it is never overwritten)")


def _load_prepared(root: Path, manifest: dict, reused: bool) -> PreparedData:
    packed = load_from_disk(str(root / "packed"))
    tokenizer = load_tokenizer(root / "tokenizer")
    if tokenizer_fingerprint(tokenizer) != manifest["tokenizer"]["sha256"]:
        raise DataError(f"{root}/tokenizer does not match its manifest (edited by hand?); rerun with force=True")
    return PreparedData(train=packed["train"], validation=packed["validation"], tokenizer=tokenizer,
                        tokenizer_dir=root / "tokenizer", manifest=manifest, root=root, reused=reused)


def _try_reuse(root: Path, keys: dict) -> PreparedData | None:
    manifest = _read_manifest(root)
    if manifest is None or manifest.get("format") != FORMAT_VERSION or manifest.get("stage_keys") != keys:
        return None
    try:
        return _load_prepared(root, manifest, reused=True)
    except (OSError, ValueError, KeyError, DataError):
        return None


def _link_tree(src: Path, dst: Path) -> None:
    """Carry an unchanged stage over from the previous build: hard links (free, and the old folder stays intact)."""

    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def _swap_into_place(staging: Path, root: Path) -> None:
    # Not atomic.replace_folder_atomically: the manifest is invalidated before the old folder moves aside, so a
    # crash between the two renames leaves nothing that looks valid, and the temp names stay hidden (".name.*").
    old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
    if root.exists():
        (root / "manifest.json").unlink(missing_ok=True)
        root.rename(old)
    staging.rename(root)
    shutil.rmtree(old, ignore_errors=True)


def _write_jsonl_gz(path: Path, docs: Iterator[dict]) -> dict:
    count = chars = 0
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as out:
        for doc in docs:
            out.write(json.dumps(doc, ensure_ascii=False) + "\n")
            count += 1
            chars += len(doc["text"])
    return {"documents": count, "chars": chars}


def _synthetic_docs(config: DataConfig) -> Iterator[dict]:
    stream = iter_problems("train", config.synthetic)
    for index in tqdm(range(config.synthetic_problems), desc="synthetic math problems", unit="problem"):
        yield {"text": problem_to_text(next(stream)), "id": f"synthetic-math-{config.synthetic.seed}-{index}",
               "source": "synthetic_math"}


def _build_corpus(config: DataConfig, clean_dir: Path) -> tuple[list[Path], dict, bool]:
    """Write the corpus under clean_dir. Returns (jsonl.gz files, stats, whether natural text is read from sources).

    Uncleaned natural text is not copied (a Hub corpus may not fit on disk) but streamed from the sources."""
    stats: dict = {}
    files: list[Path] = []
    stream_sources = bool(config.sources) and not config.clean
    if stream_sources:
        stats["natural"] = {"cleaned": False, "sources": list(config.sources)}
    elif config.sources:
        # clean_corpus builds in a sibling temp folder and renames it to clean_dir when done.
        result = clean_corpus(config.sources, clean_dir, config.cleaning, text_field=config.text_field,
                              txt_mode=config.txt_mode, limit=config.max_documents)
        files.extend(Path(f) for f in result.files)
        stats["natural"] = {"cleaned": True, "stats_path": str(Path(result.stats_path).name),
                            **{k: v for k, v in result.stats.items() if k != "datatrove_steps"}}
    clean_dir.mkdir(parents=True, exist_ok=True)
    if config.synthetic_problems:
        path = clean_dir / SYNTHETIC_FILE
        stats["synthetic_math"] = _write_jsonl_gz(path, _synthetic_docs(config))
        files.append(path)
    if not (clean_dir / "stats.json").exists():
        (clean_dir / "stats.json").write_text(json.dumps(stats, indent=2, default=str), encoding="utf-8")
    return files, stats, stream_sources


def _iter_corpus_docs(config: DataConfig, files: list[Path], stream_sources: bool) -> Iterator[dict]:
    if stream_sources:
        yield from iter_documents(config.sources, text_field=config.text_field, txt_mode=config.txt_mode,
                                  limit=config.max_documents)
    if files:  # clean/ files always hold a "text" field (datatrove's JsonlWriter and ours)
        yield from iter_documents([str(f) for f in files], text_field="text")


def _train_or_load_tokenizer(config: DataConfig, docs: Iterator[dict], out_dir: Path):
    held_out: list[str] = []
    held_chars = 0
    last_doc: list[str] = []

    def training_texts():
        nonlocal held_chars
        budget = config.tokenizer_max_chars
        used = 0
        for index, doc in enumerate(docs):
            text = doc["text"]
            last_doc[:] = [text]
            if index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 and held_chars < HELD_OUT_MAX_CHARS:
                held_out.append(text)
                held_chars += len(text)
                continue
            if budget is not None and used >= budget:
                if held_chars >= HELD_OUT_MAX_CHARS:
                    return
                continue
            used += len(text)
            yield text

    if config.tokenizer_path:
        try:
            tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_path)
        except (OSError, ValueError) as err:
            raise DataError(f"cannot load tokenizer_path={config.tokenizer_path!r} ({str(err).splitlines()[0]}); "
                            "give a folder written by save_pretrained or a Hub id") from None
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"tokenizer_path={config.tokenizer_path!r} is a slow tokenizer; use a fast (tokenizer.json) one")
        ensure_chat_template(tokenizer)
        out_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(out_dir)
        for _ in training_texts():  # only to collect held-out documents for bytes/token
            if held_chars >= HELD_OUT_MAX_CHARS:
                break
    else:
        tokenizer = train_tokenizer(training_texts(), config.vocab_size, out_dir, min_frequency=config.min_frequency)
    measured_on = "held-out documents (every 20th, not used to train the tokenizer)"
    if not held_out:
        held_out = last_doc
        measured_on = "training text (corpus has fewer than 20 documents to hold out)"
    bpt = bytes_per_token(tokenizer, held_out) if held_out else None
    return tokenizer, {"bytes_per_token": bpt, "bytes_per_token_measured_on": measured_on}


def _materialize(factory):
    for doc in factory():
        yield {"text": doc["text"]}


def _pack_splits(config: DataConfig, tokenizer, docs_factory, staging: Path):
    work = staging / "work"
    if config.streaming:
        documents = docs_factory()
    else:
        documents = Dataset.from_generator(_materialize, gen_kwargs={"factory": docs_factory},
                                           cache_dir=str(work / "documents"), keep_in_memory=False)
    blocks, stats = pack.pack_dataset(
        documents, tokenizer, config.block_size, work / "blocks.arrow", text_field="text", add_bos=config.add_bos,
        drop_remainder=config.drop_remainder, num_proc=config.num_proc, cache_dir=work / "tokenized")
    splits = pack.split_blocks(blocks, config.validation_fraction, seed=config.split_seed)
    splits.save_to_disk(str(staging / "packed"))
    byte_lengths = pack.token_byte_lengths(tokenizer)
    counts = {name: {"blocks": len(ds), **pack.count_bytes(ds, byte_lengths)} for name, ds in splits.items()}
    del blocks, splits, documents
    shutil.rmtree(work, ignore_errors=True)
    return stats.as_dict(), counts


def _throughput(sources: list[dict], timings: dict[str, float]) -> str:
    """The build's time per stage and its speed in MB of local source files per second (Hub sources have no size)."""
    seconds = sum(timings.values())
    source_bytes = sum(entry.get("bytes", 0) for entry in sources)
    stages = ", ".join(f"{name.removesuffix('_s')} {value:.1f} s" for name, value in timings.items())
    if not source_bytes:
        return f"built in {seconds:.1f} s ({stages})"
    return (f"{source_bytes / 1e6:.2f} MB of sources in {seconds:.1f} s = {source_bytes / 1e6 / seconds:.2f} MB/s "
            f"({stages})")


def prepare_data(config: DataConfig | None = None) -> PreparedData:
    """Build (or reuse) `<output_root>/<name>/` and return the packed splits, tokenizer and manifest."""
    config = config if config is not None else DataConfig()
    # Cheap checks first, so a typo fails in a second rather than after cleaning.
    if not config.tokenizer_path:
        check_vocab_size(config.vocab_size)
    if not config.sources and config.synthetic_problems == 0:
        raise DataError("the corpus is empty: no sources and synthetic_problems=0; give sources or set synthetic_problems > 0")
    if config.clean and config.sources and config.cleaning.executor == "slurm":
        # clean_corpus returns as soon as the jobs are queued; the tokenizer would be trained without the natural
        # text, and the jobs would write into a staging folder that is renamed or removed when this call ends
        raise ConfigError(
            "hfscratch data cannot wait for Slurm jobs: with cleaning.executor slurm, run clean_corpus(sources, "
            "'<shared folder>', CleanConfig(executor='slurm', ...)) on a login node, then, when the jobs are done, "
            "hfscratch data with sources: ['<shared folder>/data'] and clean: false (or use executor local or ray)")
    sources = _describe_sources(config.sources)  # raises DataError for a missing path / unsupported file
    # The cleaning settings decide the corpus; how the work is spread (executor, tasks, progress bars) does not.
    clean_options = {k: v for k, v in dataclasses.asdict(config.cleaning).items()
                     if k not in ("progress", "executor", "tasks", "workers", "start_method") and not k.startswith(("slurm_", "ray_"))
                     } if (config.clean and config.sources) else {}
    keys = _stage_keys(config, sources, clean_options)
    root = config.root
    _check_root_is_ours(root)

    if not config.force:
        reused = _try_reuse(root, keys)
        if reused is not None:
            print(f"hfscratch data: reusing prepared data in {root} (same config, sources and tokenizer)", flush=True)
            return reused

    previous = _read_manifest(root) if not config.force else None
    previous_keys = (previous or {}).get("stage_keys", {})
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    (staging / MARKER).write_text("written by hfscratch data; rebuilt when the config changes\n")
    timings: dict[str, float] = {}
    try:
        start = time.perf_counter()
        if previous_keys.get("corpus") == keys["corpus"] and (root / "clean").is_dir():
            print("hfscratch data: corpus unchanged, reusing clean/ from the previous build", flush=True)
            _link_tree(root / "clean", staging / "clean")
            corpus_stats = previous["corpus"]
            files = [staging / "clean" / f for f in corpus_stats["files"]]
            stream_sources = corpus_stats["stream_sources"]
        else:
            files, stats, stream_sources = _build_corpus(config, staging / "clean")
            clean_dir = (staging / "clean").resolve()
            relative = [str(Path(f).resolve().relative_to(clean_dir)) for f in files]
            corpus_stats = {"files": relative, "stream_sources": stream_sources, "stats": stats}
        timings["corpus_s"] = time.perf_counter() - start

        def docs_factory():
            return _iter_corpus_docs(config, files, stream_sources)

        start = time.perf_counter()
        if previous_keys.get("tokenizer") == keys["tokenizer"] and (root / "tokenizer").is_dir():
            print("hfscratch data: tokenizer inputs unchanged, reusing tokenizer/ from the previous build", flush=True)
            _link_tree(root / "tokenizer", staging / "tokenizer")
            tokenizer = load_tokenizer(staging / "tokenizer")
            tokenizer_stats = {k: previous["tokenizer"][k] for k in ("bytes_per_token", "bytes_per_token_measured_on")}
        else:
            tokenizer, tokenizer_stats = _train_or_load_tokenizer(config, docs_factory(), staging / "tokenizer")
        timings["tokenizer_s"] = time.perf_counter() - start

        start = time.perf_counter()
        pack_stats, counts = _pack_splits(config, tokenizer, docs_factory, staging)
        timings["pack_s"] = time.perf_counter() - start

        manifest = {
            "format": FORMAT_VERSION, "name": config.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "stage_keys": keys, "config": dataclasses.asdict(config), "sources": sources, "corpus": corpus_stats,
            "tokenizer": {
                "path": "tokenizer", "sha256": tokenizer_fingerprint(tokenizer), "vocab_size": len(tokenizer),
                "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id, **tokenizer_stats,
            },
            "pack": {"block_size": config.block_size, **pack_stats},
            "splits": counts,
            "bits_per_byte": (
                "bpb = (sum of next-token losses in nats over validation targets) / ln(2) / splits.validation.target_bytes; "
                "targets are every token but each block's first; special tokens count 0 bytes"
            ),
            "timings": timings,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        _check_root_is_ours(root)
        _swap_into_place(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    train, validation = counts["train"], counts["validation"]
    print(f"hfscratch data: wrote {root} — train {train['blocks']:,} blocks ({train['tokens']:,} tokens), "
          f"validation {validation['blocks']:,} blocks, vocab {len(tokenizer):,}, "
          f"bytes/token {tokenizer_stats['bytes_per_token'] or float('nan'):.2f}", flush=True)
    print(f"hfscratch data: {_throughput(sources, timings)}", flush=True)
    return _load_prepared(root, manifest, reused=False)


def prepare_data_distributed(config: DataConfig | None, accelerator, local: bool = False) -> PreparedData:
    """Only the main process builds (per node with `local=True`); the others wait at a barrier, then reuse it.

    The barrier times out with the process group (30 min by default with NCCL): prepare a large corpus beforehand
    with `hfscratch data`. Without `local`, `output_root` must be on a filesystem every process can see."""
    first = accelerator.local_main_process_first if local else accelerator.main_process_first
    with first():
        return prepare_data(config)
