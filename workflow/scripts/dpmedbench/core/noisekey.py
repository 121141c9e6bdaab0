"""The secret noise key: 256 bits from the operating system's CSPRNG, kept in one file outside every released
folder, from which every random draw a guarantee depends on is derived (``noise_source: keyed``, the default).

A stream is HMAC-SHA256(key, the stream's full identity): the same key and identity give the same draws (a rebuild
in the same checkout is byte-identical, resume and caching keep working), another checkout's key gives other
draws, and without the key no reader of a release can recreate the noise. Records name the key by its id only (a
hash prefix that reveals nothing of it).

Standard library only: the Snakefile creates the key (:func:`create_key`) in its own process while it builds the
job graph of a real run, never in a job; a job that needs the key and finds none fails (:func:`load_key`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .errors import DPMedBenchError

KEY_BYTES = 32
T = TypeVar("T")


class NoiseKeyError(DPMedBenchError):
    """The noise key is missing, unreadable, malformed or readable by others."""


def create_key(path: str | os.PathLike[str]) -> bool:
    """Create the key at ``path`` unless one is there: 256 random bits, the file created with mode 0600 in a
    folder of mode 0700, written under a temporary name and linked into place (two processes creating it at
    once end with one key). Returns whether a key was created."""
    path = Path(path).expanduser()
    if path.exists():
        return False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if another process created the key meanwhile: theirs is kept
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def load_key(path: str | os.PathLike[str]) -> bytes:
    """The key at ``path``; a missing, malformed or group/other-readable key is refused with what to do.

    >>> import tempfile
    >>> key = Path(tempfile.mkdtemp()) / "secret" / "noise.key"
    >>> create_key(key), create_key(key), len(load_key(key)), oct(key.stat().st_mode & 0o777)
    (True, False, 32, '0o600')
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise NoiseKeyError(
            f"{path}: the noise key is missing. It is created once, by the Snakemake process of a run (not by a "
            f"job), and every keyed copy and DP-SGD cell depends on it: run snakemake where this file system is "
            f"shared with the jobs, or restore the key from your backup (a new key makes new noise, and every "
            f"keyed output is rebuilt)"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise NoiseKeyError(f"{path}: the noise key is readable by others (mode {oct(mode)}): chmod 600 {path}")
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise NoiseKeyError(f"{path}: {len(key)} bytes, not a {KEY_BYTES}-byte noise key; restore it from a backup")
    return key


def key_id(key: bytes) -> str:
    """A public name of the key: 16 hex digits of a hash that reveals nothing of it.

    >>> key_id(bytes(32))
    'fe64eac2b8853a78'
    """
    return hashlib.sha256(b"dp-medbench noise key id\0" + key).hexdigest()[:16]


def keyed_entropy(key: bytes, *identity: object) -> int:
    """256 bits derived from the key and a stream's full identity, HMAC-SHA256(key, repr(identity)).

    >>> a = keyed_entropy(bytes(32), "aptos", 1.0, "noise")
    >>> a == keyed_entropy(bytes(32), "aptos", 1.0, "noise") != keyed_entropy(bytes(31) + b"1", "aptos", 1.0, "noise")
    True
    >>> a.bit_length() <= 256
    True
    """
    return int.from_bytes(hmac.new(key, repr(identity).encode(), hashlib.sha256).digest(), "little")


def keyed_seed(key: bytes, *identity: object) -> int:
    """A 63-bit seed (a PyTorch generator's) from :func:`keyed_entropy`."""
    return keyed_entropy(key, *identity) >> (256 - 63)


def key_for(path: str | os.PathLike[str], expected: str) -> bytes | None:
    """A job's key: none where its rule's ``key`` param is empty (no keyed noise), else the key at ``path``,
    refused unless its id is the one the job graph was built with (``expected``).

    >>> key_for("no/such/key", "") is None
    True
    """
    if not expected:
        return None
    key = load_key(path)
    if key_id(key) != expected:
        raise NoiseKeyError(
            f"{path}: the noise key (id {key_id(key)}) is not the one this job was planned with (id {expected}); "
            "it changed during the run: run snakemake again"
        )
    return key


def with_key(fn: Callable[..., T], path: str | os.PathLike[str], expected: str) -> Callable[..., T]:
    """``fn`` called with ``key=`` the job's key (:func:`key_for`), loaded only when it runs (inside the job's
    logging, so that a missing key is reported like any other error)."""

    def call(**kwargs: Any) -> T:
        return fn(**kwargs, key=key_for(path, expected))

    return call
