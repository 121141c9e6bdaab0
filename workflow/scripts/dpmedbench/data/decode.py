"""Decoding and resizing the images of an archive into a prepared array, on several processes, with a count of
every decision the decoder took (:data:`EVENT_NOTES`: EXIF orientation, 16-bit scaling) for ``info.json``."""

from __future__ import annotations

import functools
import inspect
import logging
import multiprocessing
import os
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

import numpy as np
from PIL import Image

from ..core.errors import ImageError
from .archive import Archive
from .imaging import ResizeMode, decode_resized, resize_loaded

log = logging.getLogger(__name__)


_worker_archive: Archive | None = None


#: Per-image decisions the decoder reports (``decode_resized(..., events=Counter())``), as notes for info.json.
EVENT_NOTES = {
    "exif_orientation_applied": "{n} {images} rotated or mirrored upright by their EXIF orientation",
    "scaled_16bit_by_sbit": "{n} {images} of 16 bits scaled to 8 by their significant bits (PNG sBIT)",
    "scaled_16bit_full_range": "{n} {images} of 16 bits scaled to 8 from the full 16-bit range (no sBIT chunk)",
    "opaque_alpha_dropped": "{n} {images} with an alpha channel or transparent colour that is opaque everywhere: "
    "read without it",
}


_BYTESIO = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def _init_worker(archive: Archive, reopen: bool) -> None:
    """Worker processes open the archive themselves: a forked zip handle shares its file offset with
    every other process, and concurrent reads through it return corrupt data."""
    global _worker_archive
    _worker_archive = Archive(archive.path) if reopen else archive


@functools.cache
def _accepts_events(decoder: Callable[..., np.ndarray]) -> bool:
    """Whether ``decoder`` takes the ``events`` keyword (imaging.decode_resized gains it; older ones do not)."""
    try:
        return "events" in inspect.signature(decoder).parameters
    except (TypeError, ValueError):
        return False


def _decode_member(task: tuple[str, int, int, str], events: Counter[str]) -> np.ndarray:
    """One member, decoded and resized; the decoder's per-image decisions are counted into ``events``."""
    member, size, channels, mode = task
    assert _worker_archive is not None
    where = _worker_archive.describe(member)
    try:
        data = _worker_archive.read(member)
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise ImageError(f"{where}: cannot read from the archive: {exc}") from None
    if not data:
        raise ImageError(
            f"{where}: the file is empty (0 bytes): the archive is incomplete or damaged; download it again, "
            f"or delete this image (and, for APTOS, its train.csv row) if it is meant to be left out"
        )
    decoder = decode_resized  # looked up at each call: tests replace it
    extra = {"events": events} if _accepts_events(decoder) else {}
    try:
        return decoder(data, size=size, channels=channels, mode=mode, **extra)  # type: ignore[arg-type]
    except ImageError as exc:
        message = _BYTESIO.sub("", str(exc))  # PIL names the in-memory file object: no help to anyone
        raise ImageError(
            f"{where}: {message}; the file ({len(data)} bytes) is damaged or not an image: download the archive "
            f"again, or delete the file (and, for APTOS, its train.csv row) if it is meant to be left out"
        ) from None


def _decode_chunk(tasks: Sequence[tuple[str, int, int, str]]) -> tuple[np.ndarray, dict[str, int]]:
    """The images of ``tasks`` and the decoder's event counts (a plain dict: it travels back from a worker)."""
    events: Counter[str] = Counter()
    return np.stack([_decode_member(t, events) for t in tasks]), dict(events)


#: Images per task sent to a worker process.
CHUNK = 8


def decode_members(
    archive: Archive, members: Sequence[str], out: np.ndarray, *, mode: ResizeMode, threads: int
) -> Counter[str]:
    """Decode and resize ``members`` into the rows of ``out`` (``(N, size, size, C)`` uint8), in order,
    on ``threads`` processes; return how many images each decoder event (:data:`EVENT_NOTES`) concerned.

    At most ``2 * threads`` chunks of :data:`CHUNK` images are in flight. After a failure no new chunk is sent;
    those in flight finish, the workers shut down normally, and the error of the earliest failed chunk is
    raised. (``multiprocessing.Pool`` left by an exception calls ``terminate()``, which deadlocked here about
    once in a few hundred runs: CPython's pool threads waited on a queue lock a killed worker held.)
    """
    size, channels = out.shape[1], out.shape[3]
    tasks = [(m, size, channels, mode) for m in members]
    events: Counter[str] = Counter()
    if threads <= 1 or len(tasks) < 2 * threads:
        _init_worker(archive, reopen=False)
        for i, task in enumerate(tasks):
            out[i] = _decode_member(task, events)
        return events
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    failures: dict[int, BaseException] = {}
    with ProcessPoolExecutor(threads, mp_context=ctx, initializer=_init_worker, initargs=(archive, True)) as ex:
        in_flight: dict[Future[tuple[np.ndarray, dict[str, int]]], int] = {}
        todo = iter(range(0, len(tasks), CHUNK))
        done = 0
        while True:
            while not failures and len(in_flight) < 2 * threads and (start := next(todo, None)) is not None:
                in_flight[ex.submit(_decode_chunk, tasks[start : start + CHUNK])] = start
            if not in_flight:
                break
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                start = in_flight.pop(future)
                try:
                    arrays, chunk_events = future.result()
                except Exception as exc:  # noqa: BLE001 - re-raised below, after the pool has shut down
                    failures[start] = exc
                    continue
                out[start : start + len(arrays)] = arrays
                events.update(chunk_events)
                done += len(arrays)
                if done // 1000 > (done - len(arrays)) // 1000:
                    log.info("  %d / %d images", done, len(tasks))
    if failures:
        raise failures[min(failures)]
    return events


def event_notes(per_split: Mapping[str, Counter[str]]) -> list[str]:
    """One note per decoder event that concerned any image, with its count per split.

    >>> for note in event_notes({"train": Counter(exif_orientation_applied=2), "val": Counter(), "test": Counter(x=1)}):
    ...     print(note)
    2 images rotated or mirrored upright by their EXIF orientation (train 2, val 0, test 0)
    1 image: x (train 0, val 0, test 1)
    """
    notes = []
    keys = sorted({k for c in per_split.values() for k, n in c.items() if n}, key=lambda k: (k not in EVENT_NOTES, k))
    for key in keys:
        n = sum(c[key] for c in per_split.values())
        text = EVENT_NOTES.get(key, "{n} {images}: " + key).format(n=n, images="image" if n == 1 else "images")
        notes.append(f"{text} ({', '.join(f'{s} {c[key]}' for s, c in per_split.items())})")
    return notes


def resize_array(images: np.ndarray, *, size: int, channels: int, mode: ResizeMode) -> np.ndarray:
    """Resize already decoded images (MedMNIST) to ``(N, size, size, channels)``."""
    out = np.empty((len(images), size, size, channels), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = resize_loaded(
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img), size=size, channels=channels, mode=mode
        )
    return out
