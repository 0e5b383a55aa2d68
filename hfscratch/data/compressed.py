"""Opening local and fsspec files with gz/bz2/zst decompression, and telling a damaged archive from an I/O failure.

zstd gets a reader of its own (`ZstdFrames`) so that a file cut mid-frame raises like gzip and bz2 do; the reading
code in `sources.py` counts such files as truncated and keeps the text before the damage.
"""

from __future__ import annotations

import gzip
import io
import lzma
import zlib
from pathlib import Path

import fsspec
import zstandard

COMPRESSION_SUFFIXES = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}

# What the decompressors raise for a file cut short or corrupted (gzip/zlib, bz2's errno-less OSError, xz, zstd): the
# text before the damage is kept, the file is counted as truncated_files and the run goes on. OSErrors with an errno
# (disk, permissions, network) are real I/O failures and still stop the run.
DAMAGED_ARCHIVE_ERRORS = (EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError, OSError)
READ_CHUNK_BYTES = 1 << 20


class ZstdFrames(io.RawIOBase):
    """The decompressed bytes of every zstd frame in a file, for `io.BufferedReader`. Not zstandard's `stream_reader`
    (nor fsspec's zstd file, which cannot iterate lines): at the end of a file cut mid-frame it returns EOF quietly;
    here that raises EOFError like gzip and bz2 do, so the file is counted as truncated."""

    def __init__(self, compressed):
        self._compressed, self._frame = compressed, zstandard.ZstdDecompressor().decompressobj()
        self._pending, self._offset = b"", 0  # decompressed bytes not yet handed out start at _offset
        self._in_frame = False  # bytes of an unfinished frame were consumed

    def readable(self) -> bool:
        return True

    def _decompress(self, chunk: bytes) -> bytes:
        parts = []
        while chunk:
            self._in_frame = True
            parts.append(self._frame.decompress(chunk))
            chunk = b""
            if self._frame.eof:  # a frame ended: the next one starts in its unused bytes
                chunk, self._frame = self._frame.unused_data, zstandard.ZstdDecompressor().decompressobj()
                self._in_frame = False
        return b"".join(parts)

    def readinto(self, buffer) -> int:
        while self._offset == len(self._pending):
            chunk = self._compressed.read(READ_CHUNK_BYTES)
            if not chunk:
                if self._in_frame:
                    raise EOFError("zstd file ended inside a frame")
                return 0
            self._pending, self._offset = self._decompress(chunk), 0
        size = min(len(buffer), len(self._pending) - self._offset)
        buffer[:size] = self._pending[self._offset:self._offset + size]
        self._offset += size
        return size

    def close(self) -> None:
        self._compressed.close()
        super().close()


def open_binary(path: str):
    """Open a local or fsspec path for binary reading, decompressing gz/bz2/zst transparently."""
    compression = COMPRESSION_SUFFIXES.get(Path(path).suffix.lower())
    if compression == "zstd":
        return io.BufferedReader(ZstdFrames(fsspec.open(path, "rb").open()))
    return fsspec.open(path, "rb", compression=compression).open()


def is_damaged_archive(error: Exception) -> bool:
    """True for a file cut short or corrupted; False for a real I/O failure (an OSError with an errno)."""
    return isinstance(error, gzip.BadGzipFile) or not (isinstance(error, OSError) and error.errno is not None)
