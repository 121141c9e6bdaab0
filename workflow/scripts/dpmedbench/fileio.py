"""Atomic writes and content hashes.

Every output of the pipeline is first written under a temporary name next to its final path and renamed
only when it is complete, so an interrupted job never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_outputs(*paths: str | os.PathLike[str]) -> Iterator[list[Path]]:
    """Yield temporary paths for ``paths``; rename them all into place only if the block succeeds.

    On any exception every temporary file is removed and no final path is touched. Example::

        with atomic_outputs("train.npy", "train.csv") as (npy, csv):
            with open(npy, "wb") as fh:  # np.save(path) would append ".npy" to the temporary name
                np.save(fh, array)
            csv.write_text(manifest)
    """
    finals = [Path(p) for p in paths]
    tmps = [_tmp_name(p) for p in finals]
    for p in finals:
        p.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmps
        for tmp, final in zip(tmps, finals, strict=True):
            if not tmp.exists():
                raise FileNotFoundError(f"internal error: {final} was never written")
        for tmp, final in zip(tmps, finals, strict=True):
            os.replace(tmp, final)
    finally:
        for tmp in tmps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_outputs(path) as (tmp,):
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root: str | os.PathLike[str]) -> str:
    """SHA-256 of a folder: the hash of its ``sha256sum``-style listing (``<sha256>  <relative path>``
    lines, sorted by path). Two folders with the same files at the same places give the same digest."""
    root = Path(root)
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        lines.append(f"{file_digest(path)}  {path.relative_to(root).as_posix()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def source_digest(path: str | os.PathLike[str]) -> dict[str, str]:
    """SHA-256 of an archive file, or of a folder's listing; says which it is."""
    path = Path(path)
    if path.is_dir():
        return {"sha256": tree_digest(path), "sha256_of": "folder listing (sha256sum of every file, sorted)"}
    return {"sha256": file_digest(path), "sha256_of": "file"}
