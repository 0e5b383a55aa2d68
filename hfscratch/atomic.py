"""Writing files and folders so that a crash or a full disk never leaves a half-written one where a reader looks:
the new content is built beside its target (same filesystem) and moved into place with one rename.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def write_file_atomically(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_figure_atomically(fig, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """`fig.savefig(path)` through a temporary file (its suffix kept, so matplotlib picks the same format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, **savefig_kwargs)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def replace_folder_atomically(write: Callable[[Path], object], output_dir: str | os.PathLike) -> Path:
    """Run `write(tmp_dir)`, then put tmp_dir where `output_dir` is; a previous folder is replaced only once the new
    one is complete (it is renamed aside first, so the swap is two renames, and removed after)."""
    output_dir = Path(output_dir)
    tmp = output_dir.with_name(output_dir.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    write(tmp)
    if output_dir.exists():
        old = output_dir.with_name(output_dir.name + f".old-{int(time.time())}")
        output_dir.rename(old)
        tmp.rename(output_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(output_dir)
    return output_dir
