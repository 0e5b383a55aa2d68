"""Pipeline blocks datatrove does not have: per-stage meter, rank-pinned shard reader, PII scrubber with phone
numbers, local eval-set N-gram indexer, and a decontamination filter with a report-only mode.

Executors (ray, slurm, spawn/forkserver workers) pickle these steps and find them again by this module path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.formatters.pii import PIIReplacer
from datatrove.pipeline.readers import JsonlReader
from datatrove.utils.hashing import create_hash_func
from datatrove.utils.text import ngrams, simplify_text
from datatrove.utils.word_tokenizers import load_word_tokenizer
from tqdm.auto import tqdm


def document_text(doc: Document) -> str:
    """Exact-dedup key: the text without leading/trailing whitespace (module level so it pickles)."""
    return doc.text.strip()


def plain_document_dict(writer, doc: Document) -> dict:
    """JsonlWriter adapter: the dict datatrove's default adapter writes for a document without media, without its
    `dataclasses.asdict` deep copy of every document (a tenth of the writers' time on the Gutenberg benchmark)."""
    if doc.media or writer.expand_metadata:
        return writer._default_adapter(doc)
    return {key: value for key, value in (("text", doc.text), ("id", doc.id), ("metadata", doc.metadata)) if value}


METER_PREFIX = "METER: after "


class StageMeter(PipelineStep):
    """Pass-through step counting documents and UTF-8 bytes after a stage, for the per-stage table.

    Datatrove blocks count documents and characters, not bytes, each type in its own place: one uniform meter after
    each stage keeps the table honest."""

    type = "📏 - METER"

    def __init__(self, stage: str):
        self.name = f"after {stage}"  # before super().__init__(), which names the stats after the step
        self.stage = stage
        super().__init__()

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update("documents")
            self.stat_update("bytes", value=len(doc.text.encode("utf-8")), unit="doc")
            yield doc


SHARD_SUFFIX = ".jsonl.zst"


class ShardReader(JsonlReader):
    """Reads exactly `<rank>.jsonl.zst` from an intermediate folder.

    Datatrove's dedup filters match documents by (rank, index in stream), so each task must re-read the shard it
    wrote; `JsonlReader` assigns files by position in the listing, which shifts when some task wrote no file."""

    name = "🐿 shard"

    def __init__(self, data_folder, totals: dict | None = None, progress: bool = True):
        super().__init__(data_folder, compression="zstd")
        self.totals = totals or {}
        self.progress = progress

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        filename = f"{rank:05d}{SHARD_SUFFIX}"
        if not self.data_folder.exists(filename):
            return
        with tqdm(total=self.totals.get(rank), unit="doc", desc=f"task {rank}", disable=not self.progress) as bar:
            for doc in self.read_file(filename):
                bar.update()
                yield doc


PHONE_REGEX = (
    r"(?<![\w+.\-])"  # not glued to a longer token
    r"(?:"
    r"\+\d{1,3}(?:[ .\-]?\(?\d{1,4}\)?){2,6}"  # international: +CC then 2-6 groups (e.g. +33 1 42 68 53 00)
    r"|(?:\(\d{2,4}\)[ .\-]?|\d{2,4}[ .\-])\d{3,4}[ .\-]\d{3,4}"  # national: area code + two groups
    r")"
    r"(?![\w\-]|\.\d)"
)


def looks_like_phone(match: str) -> bool:
    """Accept 7-15 digits; space-only separated numbers need a `+` or `(`: '1200 300 400' is a table, not a phone."""
    return 7 <= sum(c.isdigit() for c in match) <= 15 and (match.startswith(("+", "(")) or any(sep in match for sep in "-."))


class PIIScrubber(PIIFormatter):
    """datatrove's PIIFormatter (emails, IPs) plus phone numbers (which datatrove 0.10 lacks), counting replacements.

    Replacement numbers are from the 555-01xx range reserved for fiction."""

    name = "📞 PII (emails, IPs, phones)"

    def __init__(self, remove_emails: bool = True, remove_ips: bool = True, only_remove_public_ips: bool = True,
                 remove_phones: bool = True):
        super().__init__(remove_emails=remove_emails, remove_ips=remove_ips, only_remove_public_ips=only_remove_public_ips)
        self.remove_phones = remove_phones
        self.phone_replacer = PIIReplacer(PHONE_REGEX, replacements=("555-0100", "555-0199", "+1 555-0123"),
                                          validator=looks_like_phone)

    def format(self, text: str) -> str:
        for active, replacer, label in ((self.remove_emails, self.emails_replacer, "emails"),
                                        (self.remove_ips, self.ip_replacer, "ips"),
                                        (self.remove_phones, self.phone_replacer, "phones")):
            new_text = replacer.replace(text) if active else text
            if new_text != text:
                found = sum(1 for m in replacer.regex.finditer(text) if not replacer.validator or replacer.validator(m.group(0)))
                self.stat_update(f"{label}_replaced", value=found, unit="doc")
            text = new_text
        return text


class LocalEvalIndexer(PipelineStep):
    """Builds the N-gram index `NGramsDecontFilter` reads, from local eval-set documents (`metadata["task"]`).

    Not datatrove's `NGramsDecontIndexer`: it requires `lighteval` and always loads the eval tasks from the Hub.
    This step hashes N-grams exactly as that indexer does and writes the same `<task>.index.hashes` files, so
    datatrove's filter does the matching unchanged."""

    type = "🦠 - DECONT"
    name = "💥 N-grams index (local eval files)"

    def __init__(self, output_folder: str | Path, config: NGramsDecontConfig, language: str = "en"):
        super().__init__()
        self.output_folder = Path(output_folder)
        self.config = config
        self.tokenizer = load_word_tokenizer(language)
        self.hash_func = create_hash_func(config.hash_config)

    def item_hashes(self, text: str) -> list[int]:
        tokens = self.tokenizer.word_tokenize(simplify_text(text, self.config.norm_config))
        return [self.hash_func(" ".join(gram)) for gram in ngrams(tokens, self.config.n_grams)]

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> dict[str, int]:
        hashes: dict[str, set[int]] = {}
        for doc in data or []:
            task = doc.metadata.get("task", "eval")
            self.stat_update("items")
            hashes.setdefault(task, set()).update(self.item_hashes(doc.text))
        self.output_folder.mkdir(parents=True, exist_ok=True)
        counts = {}
        for task, task_hashes in hashes.items():
            array = np.array(sorted(task_hashes), dtype=self.config.hash_config.np_descr)
            array.tofile(self.output_folder / f"{task}.index.hashes")
            counts[task] = len(task_hashes)
            self.stat_update(f"ngrams_{task}", value=len(task_hashes))
        return counts


class EvalOverlapFilter(NGramsDecontFilter):
    """datatrove's N-gram decontamination filter with a report-only mode.

    In `report` mode a contaminated document is kept (with `contaminated_*` metadata) and counted as
    `reported_<task>`, so users can measure overlap before deciding to drop."""

    def __init__(self, index_folder, config: NGramsDecontConfig, mode: str = "drop", exclusion_writer=None, language="en"):
        super().__init__(index_folder, config=config, exclusion_writer=exclusion_writer, language=language)
        self.mode = mode

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        result = super().filter(doc)
        if result is True or self.mode == "drop":
            return result
        self.stat_update(f"reported_{doc.metadata['contaminated_task']}")
        return True
