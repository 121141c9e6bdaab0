"""Downloads over HTTPS with resume, progress and checksums (Kaggle archives: :mod:`dpmedbench.data.kaggle`).

Nothing is ever left under the final name unless it is complete and its checksum (when one is known)
matches: HTTP downloads grow ``<name>.part`` and are renamed at the end.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import requests

from ..core.errors import ChecksumError, DownloadError
from ..core.fileio import file_digest

log = logging.getLogger(__name__)

_RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


def _total_size(response: requests.Response, offset: int) -> int | None:
    if response.status_code == 206 and (cr := response.headers.get("Content-Range")):
        total = cr.rsplit("/", 1)[-1]
        return int(total) if total.isdigit() else None
    if (cl := response.headers.get("Content-Length")) and cl.isdigit():
        return int(cl) + (offset if response.status_code == 206 else 0)
    return None


def http_download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    md5: str | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    chunk_size: int = 1 << 18,
    progress_every: float = 10.0,
    backoff: float = 2.0,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous ``dest.part`` with an HTTP Range request.

    Connection drops are retried (up to ``retries`` times, resuming each time). When ``sha256`` or ``md5``
    is given the file is checked before it takes its final name; a mismatch deletes the partial file and
    raises :class:`ChecksumError`. An existing ``dest`` is checked and reused.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        log.info("%s already downloaded; verifying", dest)
        _verify(dest, sha256=sha256, md5=md5, url=url, delete=False)
        return dest
    attempt = 0
    while True:
        try:
            _fetch_once(url, part, timeout=timeout, chunk_size=chunk_size, progress_every=progress_every)
            break
        except _RETRYABLE as exc:
            attempt += 1
            if attempt > retries:
                raise DownloadError(
                    f"{url}: download failed after {retries} retries ({exc}); rerun to resume from {part}"
                ) from exc
            log.warning("connection problem (%s); resuming, attempt %d of %d", exc, attempt, retries)
            time.sleep(backoff * attempt)
    _verify(part, sha256=sha256, md5=md5, url=url, delete=True)
    os.replace(part, dest)
    log.info("downloaded %s (%.1f MB)", dest, dest.stat().st_size / 1e6)
    return dest


def _fetch_once(url: str, part: Path, *, timeout: float, chunk_size: int, progress_every: float) -> None:
    """One attempt: append to ``part`` from where it ends (a Range request), or start it anew when the server
    ignores the range. Returns when ``part`` is complete; a dropped connection raises one of :data:`_RETRYABLE`."""
    name = part.name.removesuffix(".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as r:
        if r.status_code == 416 and offset:
            log.info("server says %s is already complete", part)
            return
        if r.status_code not in (200, 206):
            raise DownloadError(f"{url}: HTTP {r.status_code} {r.reason}")
        if r.status_code == 200 and offset:
            log.info("server ignored the Range request; restarting %s from zero", name)
            offset = 0
        total = _total_size(r, offset)
        if offset:
            log.info("resuming %s at %.1f MB", name, offset / 1e6)
        done, last = offset, time.monotonic()
        with open(part, "ab" if offset else "wb") as fh:
            for chunk in r.iter_content(chunk_size=chunk_size):
                fh.write(chunk)
                done += len(chunk)
                if time.monotonic() - last >= progress_every:
                    last = time.monotonic()
                    pct = f" ({100 * done / total:.1f}%)" if total else ""
                    log.info("%s: %.1f MB%s", name, done / 1e6, pct)
        if total is not None and done != total:
            raise requests.exceptions.ChunkedEncodingError(f"got {done} of {total} bytes")


def _verify(path: Path, *, sha256: str | None, md5: str | None, url: str, delete: bool) -> None:
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is None:
            continue
        actual = file_digest(path, algorithm)
        if actual != expected.lower():
            if delete:
                path.unlink()
            raise ChecksumError(
                f"{path}: {algorithm} is {actual}, expected {expected} (from {url}); "
                + (
                    "the partial download was deleted, rerun to download again"
                    if delete
                    else "delete the file to download it again"
                )
            )
