"""Acquire a dataset's archive from its configured source and record what was used.

Each source is one function registered in :data:`FETCHERS`; all of them end in the same record,
``data/raw/<dataset>/source.json``: the source, the archive's path, its SHA-256 (of the file, or of the
listing of an extracted folder), its size and where it came from.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..core.errors import ChecksumError, ConfigError
from ..core.fileio import source_digest, tree_files, write_json
from . import synth
from .download import http_download
from .kaggle import KAGGLE, kaggle_download
from .medmnist import MEDMNIST

log = logging.getLogger(__name__)

Fetcher = Callable[[str, Mapping[str, Any], Path, int], tuple[Path, str]]
FETCHERS: dict[str, Fetcher] = {}


def register(name: str) -> Callable[[Fetcher], Fetcher]:
    def deco(fn: Fetcher) -> Fetcher:
        FETCHERS[name] = fn
        return fn

    return deco


@register("local")
def _local(dataset: str, cfg: Mapping[str, Any], raw_dir: Path, seed: int) -> tuple[Path, str]:
    path = Path(os.path.expanduser(cfg["archive"]))
    if not path.exists():
        raise ConfigError(
            f"datasets.{dataset}.archive: {path} does not exist (source: local expects the downloaded zip "
            f"or the folder it was extracted to)"
        )
    return path, f"local file {path}"


@register("demo")
def _demo(dataset: str, cfg: Mapping[str, Any], raw_dir: Path, seed: int) -> tuple[Path, str]:
    demo = cfg["demo"]
    if dataset == "chest_xray":
        path = synth.make_chest_archive(
            raw_dir / f"demo-{demo['layout']}.zip",
            layout=demo["layout"],
            seed=seed,
            patients_per_class=demo["patients_per_class"],
            test_per_class=demo["test_per_class"],
            image_sides=tuple(demo["image_sides"]),
        )
        return path, f"generated demo archive ({demo['layout']} layout, synthetic images)"
    path = synth.make_aptos_archive(
        raw_dir / "demo-kaggle.zip",
        seed=seed,
        images_per_grade=demo["images_per_grade"],
        unlabelled_test_images=demo["unlabelled_test_images"],
        image_sides=tuple(demo["image_sides"]),
    )
    return path, "generated demo archive (Kaggle competition layout, synthetic images)"


@register("mendeley")
def _mendeley(dataset: str, cfg: Mapping[str, Any], raw_dir: Path, seed: int) -> tuple[Path, str]:
    path = http_download(cfg["url"], raw_dir / "ChestXRay2017.zip", sha256=cfg["sha256"])
    return path, f"Mendeley Data rscbjbr9sj v2 (doi:10.17632/rscbjbr9sj.2), {cfg['url']}"


@register("medmnist")
def _medmnist(dataset: str, cfg: Mapping[str, Any], raw_dir: Path, seed: int) -> tuple[Path, str]:
    info, size = MEDMNIST[dataset], cfg["medmnist_size"]
    path = http_download(info.url(size), raw_dir / info.filename(size), md5=info.md5[size], sha256=cfg["sha256"])
    return path, f"MedMNIST+ {info.flag} {size}px, {info.url(size)} (MD5 {info.md5[size]} verified)"


@register("kaggle")
def _kaggle(dataset: str, cfg: Mapping[str, Any], raw_dir: Path, seed: int) -> tuple[Path, str]:
    kind, handle = KAGGLE[dataset]
    return kaggle_download(dataset, raw_dir / "kaggle"), f"Kaggle {kind} {handle} via kagglehub"


def fetch(*, dataset: str, settings: Mapping[str, Any], seed: int, out_json: str | os.PathLike[str]) -> dict[str, Any]:
    """Fetch ``dataset`` as ``settings`` (its ``datasets.<name>`` config block) says; write ``out_json``."""
    out_json = Path(out_json)
    raw_dir = out_json.parent
    raw_dir.mkdir(parents=True, exist_ok=True)
    source = settings["source"]
    path, origin = FETCHERS[source](dataset, settings, raw_dir, seed)
    log.info("%s: hashing %s", dataset, path)
    digest = source_digest(path)
    expected = settings.get("sha256")
    if expected and digest["sha256"] != expected:
        raise ChecksumError(f"{path}: SHA-256 is {digest['sha256']}, but datasets.{dataset}.sha256 expects {expected}")
    size = sum(p.stat().st_size for p in tree_files(path)) if path.is_dir() else path.stat().st_size
    record = {
        "dataset": dataset,
        "source": source,
        "path": _portable(path),
        **digest,
        "size_bytes": size,
        "origin": origin,
        "recorded_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    write_json(out_json, record)
    log.info("%s: %s sha256=%s (%s)", dataset, record["path"], digest["sha256"], digest["sha256_of"])
    return record


def _portable(path: Path) -> str:
    """Relative to the working directory when inside it, else absolute."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(resolved)
