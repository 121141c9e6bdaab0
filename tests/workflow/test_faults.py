"""Faults through the real workflow: a training job killed by SIGTERM (what SLURM sends at a time limit) saves its
last epoch, exits non-zero and resumes on the rerun to the same result; a full disk or a failed write never leaves
an output that Snakemake would take as complete."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from dpmedbench.core.fileio import atomic_outputs

from ..conftest import REPO, clone

CELL = "results/cells/chest_xray/none/beta0/seed0"


def _config(workdir: Path, **train) -> None:
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config.update(mechanisms=["none"], seeds=[0], device="cpu")
    config["datasets"]["aptos"]["enabled"] = False
    config["datasets"]["chest_xray"]["train"].update(train)
    (workdir / "test.yaml").write_text(yaml.safe_dump(config))


def _snakemake(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--cores", "1", *args, "--configfile", "test.yaml"]


def test_atomic_outputs_appear_together_or_not_at_all(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "sub" / "b.txt"
    with pytest.raises(RuntimeError), atomic_outputs(a, b) as (ta, tb):
        ta.write_text("complete")
        tb.write_text("half")
        raise RuntimeError("killed half-way")
    assert not a.exists() and not b.exists() and not list(tmp_path.rglob(".*tmp-*"))
    with atomic_outputs(a, b) as (ta, tb):
        ta.write_text("1")
        tb.write_text("2")
    assert a.read_text() == "1" and b.read_text() == "2" and not list(tmp_path.rglob(".*tmp-*"))
    with pytest.raises(FileNotFoundError, match="never written"), atomic_outputs(a, tmp_path / "c.txt") as (ta, _):
        ta.write_text("3")
    assert a.read_text() == "1", "a failed block must not replace an earlier complete output"


@pytest.mark.e2e
def test_sigterm_saves_the_epoch_exits_nonzero_and_the_rerun_resumes_to_the_same_result(tmp_path):
    killed = clone(tmp_path / "killed")
    _config(killed, epochs=10)
    target = f"{CELL}/metrics.json"
    data = subprocess.run(_snakemake("data/prepared/chest_xray/info.json"), cwd=killed, capture_output=True, text=True)
    assert data.returncode == 0, data.stderr[-3000:]
    proc = subprocess.Popen(
        _snakemake(target),
        cwd=killed,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    resume = killed / CELL / "resume.pt"
    deadline = time.monotonic() + 300
    while not resume.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None and resume.exists(), "training finished or failed before the first checkpoint"
    time.sleep(0.5)  # into a later epoch
    os.killpg(proc.pid, signal.SIGTERM)  # SLURM signals every process of the job step
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-3000:]
    log = (killed / "logs/train/chest_xray/none/beta0/seed0.log").read_text()
    assert "stopped; the last completed epoch is saved" in log, log[-2000:]
    for name in ("history.csv", "best.pt", "last.pt", "metrics.json"):
        assert not (killed / CELL / name).exists(), f"{name} left behind by a killed job"
    assert resume.exists()

    dry = subprocess.run(_snakemake(target, "-n"), cwd=killed, capture_output=True, text=True)
    assert "rule train:" in dry.stdout and "rule prepare:" not in dry.stdout
    rerun = subprocess.run(_snakemake(target), cwd=killed, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (killed / "logs/train/chest_xray/none/beta0/seed0.log").read_text()
    resumed_after = int(log.split("resuming after epoch ")[1].split()[0])
    assert 1 <= resumed_after < 10
    assert not resume.exists()

    whole = clone(tmp_path / "whole")
    _config(whole, epochs=10)
    done = subprocess.run(_snakemake(target), cwd=whole, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    a = pd.read_csv(killed / CELL / "history.csv").drop(columns="seconds")
    b = pd.read_csv(whole / CELL / "history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)
    best_a = torch.load(killed / CELL / "best.pt", weights_only=True)["model"]
    best_b = torch.load(whole / CELL / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_b)


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.e2e
def test_a_full_disk_fails_the_job_and_leaves_no_output(tmp_path):
    """RLIMIT_FSIZE stands in for a full disk: a write past it fails with EFBIG (Python ignores SIGXFSZ), as a
    write to a full disk fails with ENOSPC, half-way through the largest output."""
    workdir = clone(tmp_path)
    _config(workdir)
    fetched = subprocess.run(_snakemake("data/raw/chest_xray/source.json"), cwd=workdir, capture_output=True, text=True)
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    target = "data/prepared/chest_xray/info.json"
    proc = subprocess.run(
        _snakemake(target), cwd=workdir, capture_output=True, text=True, preexec_fn=_limit_file_size(64 * 1024)
    )
    assert proc.returncode != 0
    log = (workdir / "logs/prepare/chest_xray.log").read_text()
    assert "train.npy: cannot be written: the file would be larger than" in log, log[-2000:]
    assert "bytes needed for it" in log and "Traceback" not in log, log[-2000:]
    prepared = workdir / "data" / "prepared" / "chest_xray"
    left = sorted(p.name for p in prepared.iterdir()) if prepared.exists() else []
    assert left == [], f"a failed prepare left {left}"
    dry = subprocess.run(_snakemake(target, "-n"), cwd=workdir, capture_output=True, text=True)
    assert "rule prepare:" in dry.stdout


def test_a_rerun_removes_the_temporaries_of_a_killed_job_but_not_of_a_live_one(tmp_path):
    """SIGKILL leaves full-size hidden temporaries beside the outputs; the next write of those outputs removes
    the ones whose process is gone, never those of a running process (or of another host)."""
    import socket
    import subprocess
    import sys

    from dpmedbench.core.fileio import remove_stale_temporaries

    host = socket.gethostname().replace("-", "_")
    final = tmp_path / "train.npy"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f".train.npy.tmp-{host}-{dead_pid}"
        legacy = tmp_path / f".train.npy.tmp-{dead_pid}"  # written before temporaries named their host
        running = tmp_path / f".train.npy.tmp-{host}-{live.pid}"
        elsewhere = tmp_path / f".train.npy.tmp-otherhost-{dead_pid}"
        for path in (stale, legacy, running, elsewhere):
            path.write_bytes(b"x" * 1000)
        with atomic_outputs(final) as (tmp,):
            tmp.write_bytes(b"done")
        assert final.read_bytes() == b"done"
        assert not stale.exists() and not legacy.exists()
        assert running.exists() and elsewhere.exists()
        assert remove_stale_temporaries(final) == []
    finally:
        live.kill()
        live.wait()
