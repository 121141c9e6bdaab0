"""Several cells on one GPU: jobs declare the GPU memory they need (gpu_mem_mb) and Snakemake runs as many at once
as fit in what `--resources gpu_mem_mb=<card>` gives. Tested without a GPU: `device: auto` makes every training job
ask for GPU memory (and run on the CPU here), and the jobs' log times show what ran at the same time."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import yaml
from dpmedbench.core.config import dpsgd_settings, validate_config
from dpmedbench.core.gpumem import gpu_memory_mb

from ..conftest import REPO, clone

CELLS = [f"results/cells/chest_xray/{m}/seed{s}/metrics.json" for m in ("none/beta0", "dpsgd/beta1") for s in (0, 1)]


def _config(workdir: Path) -> dict:
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config.update(mechanisms=["none", "dpsgd"], betas=[1], seeds=[0, 1], device="auto")
    config["datasets"]["aptos"]["enabled"] = False
    config["datasets"]["chest_xray"]["train"]["epochs"] = 2
    (workdir / "test.yaml").write_text(yaml.safe_dump(config))
    return config


def _run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "16", *args, "--configfile", "test.yaml"]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _intervals(workdir: Path) -> list[tuple[dt.datetime, dt.datetime]]:
    """(first log line's time, log file's last write) of every training job."""
    spans = []
    for log in sorted((workdir / "logs" / "train").rglob("*.log")):
        first = log.read_text().splitlines()[0]
        start = dt.datetime.strptime(first[:23], "%Y-%m-%d %H:%M:%S,%f")
        spans.append((start, dt.datetime.fromtimestamp(log.stat().st_mtime)))
    return spans


def _most_at_once(spans: list[tuple[dt.datetime, dt.datetime]]) -> int:
    return max(sum(s <= start < e for s, e in spans) for start, _ in spans)


def test_a_card_runs_as_many_training_jobs_at_once_as_fit(tmp_path):
    workdir = clone(tmp_path)
    config = validate_config(_config(workdir))  # with the schema's defaults
    _run(workdir, "data/prepared/chest_xray/info.json")
    crop = config["model"]["crop"]
    nonprivate = gpu_memory_mb("none", crop=crop, chunk=config["model"]["max_physical_batch"])
    dp = dpsgd_settings(config, "chest_xray")
    dpsgd = gpu_memory_mb("dpsgd", crop=crop, chunk=dp["max_physical_batch"], grad_sample_mode=dp["grad_sample_mode"])
    # The jobs' declared needs, as Snakemake sees them.
    dry = _run(workdir, *CELLS, "-n", "--resources", "gpu_mem_mb=81920")
    assert dry.stdout.count(f"gpu_mem_mb={nonprivate}") == 2 and dry.stdout.count(f"gpu_mem_mb={dpsgd}") == 2

    _run(workdir, *CELLS, "--resources", "gpu_mem_mb=81920")  # a fake 80 GiB card: all four fit
    assert len(_intervals(workdir)) == 4 and _most_at_once(_intervals(workdir)) >= 3

    _run(workdir, *CELLS, "--forcerun", "train", "--resources", f"gpu_mem_mb={max(nonprivate, dpsgd)}")
    assert len(_intervals(workdir)) == 4 and _most_at_once(_intervals(workdir)) == 1  # one card's worth: one job
