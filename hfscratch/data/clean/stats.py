"""Per-stage stats: merge datatrove's per-task stats, summarize them per table stage (docs/bytes in and out, why
dropped), print the table, write `stats.json`, and refuse a run whose filters emptied the corpus."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from datatrove.utils.stats import PipelineStats

from hfscratch.errors import DataError

from .config import RELAX_HINT, CleanResult
from .steps import METER_PREFIX


def _stage_stats(logging_dir: Path) -> list[dict]:
    """Sum the per-task stats files every datatrove executor writes (stats/<rank>.json)."""
    files = sorted((logging_dir / "stats").glob("*.json"))
    merged = sum((PipelineStats.from_json(json.loads(f.read_text())) for f in files), start=PipelineStats())
    return [s.to_dict() for s in merged.stats]


def _per_rank_documents(logging_dir: Path) -> dict[int, int]:
    counts = {}
    for file in (logging_dir / "stats").glob("*.json"):
        for step in json.loads(file.read_text()):
            if step["name"].endswith(METER_PREFIX + "read"):
                counts[int(file.stem)] = _total(step["stats"], "documents")
    return counts


def _total(stats: dict, key: str) -> int:
    value = stats.get(key, 0)
    return int(value["total"]) if isinstance(value, dict) else int(value or 0)


def summarize(step_stats: list[dict], block_stages: dict[str, str]) -> dict:
    """Turn datatrove step stats into {stage: {docs_in, docs_out, bytes_in, bytes_out, dropped, details}}."""
    by_name = {s["name"]: s["stats"] for s in step_stats}
    meters = [s for s in step_stats if METER_PREFIX in s["name"]]
    summary: dict[str, dict] = {}
    previous_docs = previous_bytes = None
    for meter in meters:
        stage = meter["name"].split(METER_PREFIX, 1)[1]
        docs_out, bytes_out = _total(meter["stats"], "documents"), _total(meter["stats"], "bytes")
        docs_in = previous_docs if previous_docs is not None else docs_out
        summary[stage] = {"docs_in": docs_in, "docs_out": docs_out, "bytes_in": bytes_out if previous_bytes is None
                          else previous_bytes, "bytes_out": bytes_out, "dropped": docs_in - docs_out, "details": {}}
        previous_docs, previous_bytes = docs_out, bytes_out
    # why: the stats datatrove's own blocks recorded, attached to the stage they belong to
    skip = {"total", "forwarded", "dropped", "doc_len", "doc_len_tokens", "documents"}
    for name, stats in by_name.items():
        stage = block_stages.get(name)
        if stage is None or stage not in summary:
            continue
        for key in stats:
            if key not in skip:
                summary[stage]["details"][key] = _total(stats, key)
    return summary


def format_table(summary: dict) -> str:
    header = f"{'stage':<18} {'docs in':>9} {'docs out':>9} {'dropped':>8} {'MB in':>9} {'MB out':>9}  details"
    lines = [header, "-" * len(header)]
    for stage, row in summary.items():
        details = ", ".join(f"{k}={v}" for k, v in sorted(row["details"].items()) if v)
        lines.append(f"{stage:<18} {row['docs_in']:>9} {row['docs_out']:>9} {row['dropped']:>8} "
                     f"{row['bytes_in'] / 1e6:>9.3f} {row['bytes_out'] / 1e6:>9.3f}  {details}")
    return "\n".join(lines)


def _check_not_emptied(summary: dict) -> None:
    for stage, row in summary.items():
        if row["docs_in"] > 0 and row["docs_out"] == 0:
            hint = RELAX_HINT.get(stage, "relax its thresholds")
            raise DataError(f"cleaning removed every document at stage '{stage}' ({row['docs_in']} in, 0 out); {hint}")
    if summary and next(iter(summary.values()))["docs_out"] == 0:
        raise DataError("cleaning read 0 documents; check the sources hold text (text_field, txt_mode)")


def collect_clean_result(output_dir: str | Path, print_table: bool = True) -> CleanResult:
    """Gather files and per-stage stats of a finished run (used directly after Slurm jobs complete)."""
    output_dir = Path(output_dir)
    logs = output_dir / "logs"
    if not logs.is_dir():
        raise DataError(f"{output_dir} has no logs/ folder; it is not the output of clean_corpus")
    layout = json.loads((output_dir / "stages.json").read_text())
    step_stats = [step for stage in layout["stages"] for step in _stage_stats(logs / stage)]
    summary = summarize(step_stats, layout["blocks"])
    index_file = output_dir / "decontamination_index.json"
    index_info = json.loads(index_file.read_text()) if index_file.is_file() else {}
    stats = {"stages": summary, "decontamination_index_ngrams": index_info, "datatrove_steps": step_stats}
    stats_path = output_dir / "stats.json"
    stats_path.write_text(json.dumps(stats, indent=2, ensure_ascii=False))
    if print_table:
        print(format_table(summary), file=sys.stderr)
    files = sorted((output_dir / "data").glob("*.jsonl.gz"))
    return CleanResult(files=files, stats=stats, stats_path=stats_path, output_dir=output_dir)
