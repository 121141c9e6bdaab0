"""Pre-flight check: what the configured run will need, verified in seconds before any heavy job.

``python -m dpmedbench.preflight --configfile config.yaml`` (``make check``) validates the configuration, then
checks each need of the run — the archive or credentials of every dataset, the pretrained weights, free disk
against the planned need, the device — and prints one table: ✓ (ready), ✗ (the run will fail: the fix is
given), or · (information). It exits with status 1 when any line is ✗. Checks are a registry: a new one is one
function that returns rows.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from .core.config import check_local_archives, enabled_datasets, ldp_mechanisms, uses_noise_key, validate_config
from .core.errors import ConfigError
from .core.names import CHANNELS
from .core.noisekey import NoiseKeyError, key_id, load_key

#: Images of each dataset by source (the full archives), for the disk plan.
IMAGES = {
    "chest_xray": {"kaggle": 5856, "mendeley": 5856, "medmnist": 5856, "local": 5856},
    "aptos": {"kaggle": 3662, "medmnist": 1600, "local": 3662},
}
#: Share of the images in the noised splits (train + val): chest X-rays keep the official 624-image test split,
#: APTOS holds out test_fraction (0.2 by default).
NOISED_SHARE = {"chest_xray": 5232 / 5856, "aptos": 0.8}
#: Approximate download sizes in bytes (the archives as their sources publish them; MedMNIST at 224 px).
DOWNLOAD_BYTES = {
    ("chest_xray", "kaggle"): 2.5e9,
    ("chest_xray", "mendeley"): 1.3e9,
    ("chest_xray", "medmnist"): 0.5e9,
    ("aptos", "kaggle"): 10.0e9,
    ("aptos", "medmnist"): 0.3e9,
}
#: Disk per trained cell: best.pt, last.pt and the resume state of a ResNet-18 (measured on the demo: 1.8 GB
#: for 14 cells).
CELL_BYTES = 130e6
WEIGHTS_HOST = "https://download.pytorch.org"


@dataclass(frozen=True)
class Row:
    need: str
    status: str  # "ok", "fail" or "info"
    detail: str
    fix: str = ""


Check = Callable[[Mapping[str, Any], Path], list[Row]]
CHECKS: dict[str, Check] = {}


def check(name: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS[name] = fn
        return fn

    return register


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host and port opens within ``timeout`` seconds."""
    parts = urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


@check("data")
def data_sources(config: Mapping[str, Any], root: Path) -> list[Row]:
    """Per dataset: already fetched, or what its source needs (credentials, network, the local archive)."""
    rows = []
    for name in enabled_datasets(config):
        ds = config["datasets"][name]
        source = ds["source"]
        need = f"{name}: data ({source})"
        if (root / "data" / "raw" / name / "source.json").exists():
            rows.append(Row(need, "ok", f"already fetched (data/raw/{name}/source.json)"))
        elif source == "demo":
            rows.append(Row(need, "ok", "generated on the fly"))
        elif source == "local":
            rows.append(Row(need, "ok", f"{ds['archive']} exists"))
        elif source == "kaggle":
            rows.append(_kaggle_row(name, need))
        else:
            url = ds.get("url") if source == "mendeley" else "https://zenodo.org"
            ok = reachable(url)
            rows.append(
                Row(
                    need,
                    "ok" if ok else "fail",
                    f"{urlparse(url).hostname} {'reachable' if ok else 'unreachable'}",
                    ""
                    if ok
                    else f"no network here: download the archive on a machine with internet and set "
                    f"datasets.{name}.source: local and datasets.{name}.archive: <its path>",
                )
            )
    return rows


def _kaggle_row(name: str, need: str) -> Row:
    from kagglehub.config import get_kaggle_credentials

    from .data.kaggle import KAGGLE

    if get_kaggle_credentials() is None:
        return Row(
            need,
            "fail",
            "no Kaggle credentials",
            "create an API token at https://www.kaggle.com/settings (API), save it as ~/.kaggle/access_token or "
            f"export KAGGLE_API_TOKEN; or download the archive yourself and set datasets.{name}.source: local",
        )
    kind = KAGGLE[name][0]
    rules = " (the competition rules must be accepted on its Kaggle page; not checkable from here)"
    ok = reachable("https://www.kaggle.com")
    return Row(
        need,
        "ok" if ok else "fail",
        f"credentials found; kaggle.com {'reachable' if ok else 'unreachable'}"
        + (rules if kind == "competition" else ""),
        ""
        if ok
        else f"no network here: fetch on a machine with internet (download rules run where Snakemake "
        f"runs), or set datasets.{name}.source: local",
    )


@check("weights")
def weights(config: Mapping[str, Any], root: Path) -> list[Row]:
    """The ImageNet weights: not needed, a local file, already downloaded, or downloadable."""
    from .data.weights import RESNET18_URL, WeightsError, check_weights

    model = config["model"]
    if not model["pretrained"]:
        return [Row("ImageNet weights", "ok", "not needed (model.pretrained: false: trained from scratch)")]
    path = (
        Path(model["weights"]).expanduser()
        if model["weights"]
        else root / "data/weights" / RESNET18_URL.rsplit("/", 1)[1]
    )
    if path.exists():
        try:
            check_weights(path)
            return [Row("ImageNet weights", "ok", f"{path} (SHA-256 checked)")]
        except WeightsError as exc:
            return [Row("ImageNet weights", "fail", str(exc), f"delete {path}; it is downloaded again")]
    if model["weights"]:
        return [
            Row(
                "ImageNet weights",
                "fail",
                f"model.weights: {path} does not exist",
                "give the path of torchvision's resnet18-f37072fd.pth, or model.pretrained: false",
            )
        ]
    ok = reachable(WEIGHTS_HOST)
    return [
        Row(
            "ImageNet weights",
            "ok" if ok else "fail",
            f"to download from {WEIGHTS_HOST} (45 MB): {'reachable' if ok else 'unreachable'}",
            ""
            if ok
            else "no network here: copy resnet18-f37072fd.pth from a machine with internet and set "
            "model.weights: <its path>, or set model.pretrained: false (trains from scratch)",
        )
    ]


def planned_bytes(config: Mapping[str, Any], root: Path) -> dict[str, float]:
    """Disk the configured run will write, by stage (approximate: archive sizes as published, arrays exact)."""
    side, plan = config["image_size"], {"downloads": 0.0, "prepared arrays": 0.0, "Local-DP copies": 0.0}
    betas, cells = len(config["betas"]), 0
    for name in enabled_datasets(config):
        ds = config["datasets"][name]
        if ds["source"] == "demo":
            continue
        if not (root / "data" / "raw" / name / "source.json").exists():
            plan["downloads"] += DOWNLOAD_BYTES.get((name, ds["source"]), 0.0)
        images = IMAGES[name].get(ds["source"], 0) * side * side * CHANNELS[name]
        plan["prepared arrays"] += images
        if "ldp" in config["mechanisms"]:
            for mechanism in ldp_mechanisms(config, name):
                per_value = 1 if ds["ldp"]["clip"] or mechanism == "laplace_image_shift" else 2
                plan["Local-DP copies"] += NOISED_SHARE[name] * images * per_value * betas
    for name in enabled_datasets(config):
        for mechanism in config["mechanisms"]:
            per_mechanism = 1 if mechanism == "none" else betas
            if mechanism == "ldp":
                per_mechanism *= len(ldp_mechanisms(config, name))
            cells += per_mechanism * len(config["seeds"]) + per_mechanism * config["evaluation"]["reference_models"]
    plan["checkpoints"] = cells * CELL_BYTES
    return plan


@check("disk")
def disk(config: Mapping[str, Any], root: Path) -> list[Row]:
    plan = planned_bytes(config, root)
    need = sum(plan.values())
    free = shutil.disk_usage(root).free
    detail = (
        f"{_gb(free)} free, about {_gb(need)} planned ("
        + ", ".join(f"{k} {_gb(v)}" for k, v in plan.items() if v)
        + ")"
    )
    ok = free > 1.1 * need
    return [
        Row(
            "free disk",
            "ok" if ok else "fail",
            detail,
            "" if ok else f"free at least {_gb(1.1 * need - free)} in {root}, or run fewer cells (betas, seeds)",
        )
    ]


@check("device")
def device(config: Mapping[str, Any], root: Path) -> list[Row]:
    import torch

    wanted = str(config["device"])
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    found = f"CUDA {'yes: ' + torch.cuda.get_device_name(0) if cuda else 'no'}, Apple MPS {'yes' if mps else 'no'}"
    if wanted.startswith("cuda") and not cuda:
        return [
            Row(
                f"device: {wanted}",
                "fail",
                found,
                "no CUDA GPU visible to PyTorch here: set device: auto (or cpu), or run on a GPU node (profiles/slurm)",
            )
        ]
    if wanted == "mps" and not mps:
        return [Row("device: mps", "fail", found, "Apple MPS is not available here: set device: auto or cpu")]
    if wanted == "auto" and not (cuda or mps):
        return [Row("device: auto", "info", found + "; training runs on the CPU (hours per real cell, see README)")]
    return [Row(f"device: {wanted}", "ok", found)]


@check("conda")
def conda(config: Mapping[str, Any], root: Path) -> list[Row]:
    found = shutil.which("mamba") or shutil.which("conda")
    if found:
        return [Row("conda (for --use-conda)", "ok", found)]
    return [
        Row(
            "conda (for --use-conda)",
            "info",
            "neither conda nor mamba on PATH",
            "only --use-conda needs it (https://conda-forge.org/download/); without it run .venv/bin/snakemake "
            "--cores N, whose environment has every package",
        )
    ]


@check("noise key")
def noise_key(config: Mapping[str, Any], root: Path) -> list[Row]:
    """The secret key of keyed noise: there and private, or to be created by the first run."""
    if not uses_noise_key(config):
        return [Row("noise key", "info", "no copy or DP-SGD cell of this grid draws keyed noise")]
    path = root / Path(config["noise_key"]).expanduser()
    if not path.exists():
        return [Row("noise key", "info", f"{path} does not exist yet: the first run creates it (mode 0600); back it "
                    "up then, and keep it out of anything you publish")]  # fmt: skip
    try:
        return [Row("noise key", "ok", f"{path} (id {key_id(load_key(path))}); keep a backup")]
    except NoiseKeyError as exc:
        return [Row("noise key", "fail", str(exc), "see the message")]


def run_checks(config: Mapping[str, Any], root: Path, names: Sequence[str] | None = None) -> list[Row]:
    rows: list[Row] = []
    for name in names or CHECKS:
        try:
            rows += CHECKS[name](config, root)
        except Exception as exc:  # noqa: BLE001  (a check that cannot run is a failed check, with the reason)
            rows.append(Row(name, "fail", f"the check itself failed: {exc}", "see the message"))
    return rows


def render(rows: Sequence[Row]) -> str:
    marks = {"ok": "✓", "fail": "✗", "info": "·"}
    width = max(len(r.need) for r in rows)
    lines = []
    for r in rows:
        lines.append(f"{marks[r.status]} {r.need:<{width}}  {r.detail}")
        if r.fix:
            lines.append(f"  {'':<{width}}  fix: {r.fix}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", default="config.yaml")
    parser.add_argument("--root", default=".", help="the working directory of the run")
    args = parser.parse_args(argv)
    try:
        config = validate_config(yaml.safe_load(Path(args.configfile).read_text()) or {})
        check_local_archives(config)
    except (ConfigError, OSError) as exc:
        print(f"✗ configuration  {exc}")
        return 1
    rows = run_checks(config, Path(args.root))
    print(f"dp-medbench pre-flight check of {args.configfile}\n{render(rows)}")
    failed = [r for r in rows if r.status == "fail"]
    print(f"\n{len(failed)} problem(s) to fix before running." if failed else "\nReady to run.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
