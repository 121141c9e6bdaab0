"""Atomic writes and content hashes.

Every output of the pipeline is first written under a temporary name next to its final path and renamed
only when it is complete, so an interrupted job never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_HOST = socket.gethostname().replace("-", "_") or "host"


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries of ``path`` left by a process of this host that no longer runs (a job killed by
    SIGKILL, an out-of-memory kill); those of live processes, or of other hosts sharing the file system, stay.
    Returns what it removed."""
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        host, _, pid = tmp.name.rpartition(".tmp-")[2].rpartition("-")
        if host in (_HOST, "") and pid.isdigit() and not _alive(int(pid)):  # "": written before hosts were named
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_outputs(*paths: str | os.PathLike[str]) -> Iterator[list[Path]]:
    """Yield temporary paths for ``paths``; rename them all into place only if the block succeeds.

    On any exception every temporary file is removed and no final path is touched. Temporaries that a killed
    earlier run left for the same paths are removed first (:func:`remove_stale_temporaries`). Example::

        with atomic_outputs("train.npy", "train.csv") as (npy, csv):
            with open(npy, "wb") as fh:  # np.save(path) would append ".npy" to the temporary name
                np.save(fh, array)
            csv.write_text(manifest)
    """
    finals = [Path(p) for p in paths]
    tmps = [_tmp_name(p) for p in finals]
    for p in finals:
        p.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(p)
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


#: Write failures that are a lack of room, not a bug: what each means to the person who must fix it.
_NO_ROOM = {
    errno.ENOSPC: "no space left on the disk",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file would be larger than the file system or this process's file-size limit (ulimit -f) allows",
}


def free_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes free for this user in ``folder`` (or the nearest folder above it that exists)."""
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def require_space(folder: str | os.PathLike[str], needed: int, what: str) -> None:
    """A named :class:`~dpmedbench.core.errors.OutputSpaceError` before anything is written when ``folder`` has
    less than ``needed`` bytes free for ``what``."""
    from .errors import OutputSpaceError

    if (free := free_bytes(folder)) < needed:
        raise OutputSpaceError(
            f"{what}: {needed:,} bytes needed, only {free:,} free in {Path(folder).absolute()}; nothing was written: "
            f"free space there (or point the results to a larger disk) and run again"
        )


@contextlib.contextmanager
def writing(output: str | os.PathLike[str], needed: int) -> Iterator[None]:
    """Turn a disk-full, quota or file-too-large failure while writing ``output`` (``needed`` bytes) into a named
    :class:`~dpmedbench.core.errors.OutputSpaceError`; any other error passes unchanged. Used inside
    :func:`atomic_outputs`, which then removes what was half-written."""
    from .errors import OutputSpaceError

    try:
        yield
    except OSError as exc:
        if exc.errno not in _NO_ROOM:
            raise
        raise OutputSpaceError(
            f"{output}: cannot be written: {_NO_ROOM[exc.errno]} ({needed:,} bytes needed for it, "
            f"{free_bytes(Path(output).parent):,} free in {Path(output).absolute().parent}); nothing was written: "
            f"free space (or raise the limit) and run again"
        ) from None


def reserve(path: str | os.PathLike[str], size: int) -> None:
    """Allocate ``size`` bytes of disk for ``path`` now (``posix_fallocate``), so that a memory-mapped write can
    never meet a full disk later, where it would kill the process with SIGBUS instead of raising an error. A file
    system that cannot allocate ahead (some network ones) is left as it is."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, size)
        except OSError as exc:
            if exc.errno in _NO_ROOM:
                raise
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite number (NaN, infinity: not JSON) replaced by ``None``, numpy scalars and
    arrays as Python numbers and lists. A result that is undefined (an AUROC without positives) or unbounded
    reads as ``null``; where an epsilon is unbounded its record says why (``epsilon_reason``).

    >>> import numpy as np
    >>> json_safe({"a": float("nan"), "b": [1.5, float("inf")], "c": np.float32(2.0), "d": np.arange(2)})
    {'a': None, 'b': [1.5, None], 'c': 2.0, 'd': [0, 1]}
    """
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # a numpy array or scalar (no numpy import here)
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(data: Any, *, sort_keys: bool = False) -> str:
    """Strict JSON (no NaN or Infinity literals: :func:`json_safe`), indented, with a final newline: the one way
    every JSON output of the pipeline is written."""
    return json.dumps(json_safe(data), indent=2, sort_keys=sort_keys, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented strict JSON (:func:`json_text`), atomically."""
    with atomic_outputs(path) as (tmp,):
        tmp.write_text(json_text(data))


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every file of a folder, sorted by relative path (part by part), the one way a folder is listed.

    A symbolic link is followed only when its target lies inside ``root`` (a linked sub-folder is walked; a link
    back up a branch is a cycle and refused); a link that points outside ``root`` or nowhere, and any special
    file (FIFO, socket, device), is a :class:`~dpmedbench.core.errors.LayoutError` naming it: reading around it
    would change the dataset without a word, and reading it could hang or read a file that is not the dataset's.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); (d / "b").mkdir(); _ = (d / "b" / "x").write_text(""), (d / "a").write_text("")
    >>> [p.relative_to(d).as_posix() for p in tree_files(d)]
    ['a', 'b/x']
    """
    from .errors import LayoutError

    root = Path(root)
    real_root = os.path.realpath(root)
    found: list[Path] = []

    def inside(target: str) -> bool:
        return target == real_root or target.startswith(real_root.rstrip(os.sep) + os.sep)

    def walk(folder: Path, chain: frozenset[str]) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                path = Path(entry.path)
                if entry.is_symlink():
                    target = os.path.realpath(path)
                    if not inside(target) or not os.path.exists(target):
                        where = "nowhere" if not os.path.exists(target) else f"outside the folder, to {target}"
                        raise LayoutError(
                            f"{path}: a symbolic link that points {where}; only links that stay inside {root} are "
                            f"followed: copy the file or folder it means into place, or delete the link"
                        )
                mode = os.stat(path).st_mode
                if stat.S_ISDIR(mode):
                    real = os.path.realpath(path)
                    if real in chain:
                        raise LayoutError(f"{path}: a symbolic link to a folder that contains it (a cycle): delete it")
                    walk(path, chain | {real})
                elif stat.S_ISREG(mode):
                    found.append(path)
                else:
                    raise LayoutError(
                        f"{path}: a special file (FIFO, socket or device), not a regular file; no dataset holds one, "
                        f"and reading it could block forever: delete it, or give a folder without it"
                    )

    walk(root, frozenset({real_root}))
    return sorted(found, key=lambda p: p.relative_to(root).parts)


#: How a folder's listing is hashed (:func:`tree_digest`); cached digests of another scheme are recomputed.
TREE_SCHEME = "length-prefixed v2"


def tree_digest(root: str | os.PathLike[str]) -> str:
    r"""SHA-256 of a folder: of every file, sorted by relative path, the path's length and bytes and the file's
    SHA-256, each field length-prefixed, so that no two different folders share a listing (a newline or any
    other character in a file name cannot make one folder's listing read as another's).

    >>> import tempfile
    >>> a, b = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
    >>> _ = (a / "x\n0000  y").write_text(""), (b / "x").write_text(""), (b / "y").write_text("")
    >>> tree_digest(a) != tree_digest(b)
    True
    """
    root = Path(root)
    h = hashlib.sha256(TREE_SCHEME.encode() + b"\0")
    for path in tree_files(root):
        name = path.relative_to(root).as_posix().encode("utf-8", "surrogateescape")
        digest = bytes.fromhex(file_digest(path))
        h.update(len(name).to_bytes(8, "little") + name + len(digest).to_bytes(8, "little") + digest)
    return h.hexdigest()


def source_digest(path: str | os.PathLike[str]) -> dict[str, str]:
    """SHA-256 of an archive file, or of a folder's listing; says which it is."""
    path = Path(path)
    if path.is_dir():
        return {
            "sha256": tree_digest(path),
            "sha256_of": f"folder listing ({TREE_SCHEME}: every file's path and SHA-256, sorted)",
        }
    return {"sha256": file_digest(path), "sha256_of": "file"}


def _stat_key(path: Path) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def identity_key(path: str | os.PathLike[str]) -> str:
    """What identifies an archive cheaply: size, modification and change times and inode of the file, or of
    every file of a folder with its relative path. Any write, replacement (``cp -p``, ``mv``, ``unzip`` included:
    they cannot keep the change time) or added, removed or renamed file changes it."""
    path = Path(path).resolve()
    if path.is_dir():
        listing = [[p.relative_to(path).as_posix(), *_stat_key(p)] for p in tree_files(path)]
    else:
        listing = [_stat_key(path)]
    return hashlib.sha256(json.dumps([str(path), listing]).encode()).hexdigest()


def cached_source_digest(path: str | os.PathLike[str], cache: str | os.PathLike[str]) -> dict[str, str]:
    """:func:`source_digest` of an archive, remembered in the JSON file ``cache`` under its :func:`identity_key`:
    an unchanged archive is not read again; any change to it is hashed anew."""
    cache = Path(cache)
    key = identity_key(path)
    known = _read_cache(cache)
    if key in known and Path(path).is_dir() and known[key].get("scheme") != TREE_SCHEME:
        log.warning(
            "%s: folder digest of an older scheme in %s: hashing the folder again (%s)", path, cache, TREE_SCHEME
        )
        del known[key]
    if key not in known:
        known = {k: v for k, v in known.items() if v.get("path") != str(Path(path).resolve())}
        known[key] = {**source_digest(path), "path": str(Path(path).resolve()), "scheme": TREE_SCHEME}
        write_json(cache, known)
    return {k: known[key][k] for k in ("sha256", "sha256_of")}


def _read_cache(cache: Path) -> dict[str, dict[str, str]]:
    """The digest cache, or an empty one where it is missing; a damaged cache (not a JSON object of records) is
    set aside with a note and rebuilt: it only saves time."""
    try:
        known = json.loads(cache.read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        known = None
    if isinstance(known, dict) and all(isinstance(v, dict) for v in known.values()):
        return known
    log.warning("%s: damaged digest cache (not a JSON object of records): rebuilding it", cache)
    return {}


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON output of the pipeline; a damaged one (truncated, not JSON) is a named error that says how to rebuild
    it, never a raw traceback."""
    from .errors import DamagedOutputError

    try:
        return json.loads(Path(path).read_text())
    except ValueError as exc:
        raise DamagedOutputError(
            f"{path}: damaged, not JSON ({exc}); delete it and run snakemake again, which rebuilds it (or "
            f"snakemake --force {path})"
        ) from None
