"""profiles/slurm on a real one-node SLURM (tests/support/slurm.py): every rule kind runs as a SLURM job, training,
reference models and evaluation ask for the GPU partition and a GPU, downloads stay local, and a second run has
nothing to do.

CI installs SLURM (.ci/run) and sets DPMEDBENCH_REQUIRE_SLURM=1, so there a missing SLURM fails instead of
skipping.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ..conftest import REPO, clone
from ..support import slurm

pytestmark = pytest.mark.e2e
# The cell grid of this test: one dataset, every mechanism, one beta and seed.
EXPECTED_JOBS = {
    "prepare": 1,
    "ldp_copy": 1,
    "ldp_attack": 1,
    "figure2": 1,
    "train": 3,
    "reference": 3,
    "evaluate": 3,
    "summary": 1,
    "tables": 1,
    "data_table": 1,
    "configuration": 1,
    "figures": 1,
    "report_landing": 1,
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    reason = slurm.missing()
    if reason:
        if os.environ.get("DPMEDBENCH_REQUIRE_SLURM") == "1":
            pytest.fail(f"DPMEDBENCH_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    c = slurm.Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
        yield c
    finally:
        c.stop()
    assert all(p.poll() is not None for p in c.procs.values()), "a SLURM daemon outlived the test"


def run_profile(workdir: Path, cluster: slurm.Cluster, *args: str, limit: int = 1200) -> subprocess.CompletedProcess:
    """snakemake --profile profiles/slurm, bounded by timeout -k. squeue answers status queries: there is no
    slurmdbd here, and sacct (installed with the client) would report nothing."""
    cmd = [
        "timeout",
        "-k",
        "30",
        str(limit),
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        "profiles/slurm",
        "--configfile",
        "slurm.yaml",
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--seconds-between-status-checks",
        "5",
        *args,
    ]
    env = {**cluster.env, "DPMEDBENCH_SLURM_GPU_PARTITION": "gpu", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("DPMEDBENCH_SLURM_PARTITION", None)
    env.pop("DPMEDBENCH_SLURM_ACCOUNT", None)
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env, timeout=limit + 60)


def test_profile_settings_are_what_the_cluster_needs():
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["rerun-incomplete"] is True and profile["jobs"] >= 1
    assert profile["set-resources"]["train"]["gpu"] == 1
    assert "DPMEDBENCH_SLURM_ACCOUNT" in profile["default-resources"]["slurm_account"]
    config_text = (REPO / "config.yaml").read_text() + (
        REPO / "workflow" / "schemas" / "config.schema.yaml"
    ).read_text()
    for word in ("mem_mb", "runtime", "threads", "slurm"):
        assert word not in config_text, f"{word} belongs in profiles/, not in config.yaml"
    local = yaml.safe_load((REPO / "profiles" / "local" / "config.yaml").read_text())
    assert local["resources"]["gpu_mem_mb"] >= 16384 and "gpu" not in local["resources"]  # packed by memory
    # Every rule that reaches SLURM is sized by the profile, and the profile names no rule that does not exist.
    text = "".join(p.read_text() for p in sorted((REPO / "workflow" / "rules").glob("*.smk")))
    rules = set(re.findall(r"^rule (\w+):", text, re.M))
    local_rules = {
        name.strip(",")
        for block in re.findall(r"^localrules:\n((?:    \w+,?\n)+)", text, re.M)
        for name in block.split()
    }
    assert local_rules == {"fetch", "weights"}
    assert set(profile["set-resources"]) | set(profile["set-threads"]) <= rules
    assert set(profile["set-resources"]) == rules - local_rules


def test_demo_subset_runs_through_the_slurm_profile_then_has_nothing_to_do(cluster, tmp_path):
    workdir = clone(tmp_path)
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config.update(betas=[1], seeds=[0], mechanisms=["none", "ldp", "dpsgd"], device="cpu")
    config["evaluation"] = {"reference_models": 1}  # the calibrated audit's reference-model jobs too
    config["datasets"]["aptos"]["enabled"] = False
    config["datasets"]["chest_xray"]["ldp"]["mechanism"] = "laplace_pixel"  # one mechanism, written as one name
    (workdir / "slurm.yaml").write_text(yaml.safe_dump(config))

    proc = run_profile(workdir, cluster)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake --profile profiles/slurm failed ({proc.returncode}):\n{text[-6000:]}"

    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+?)/", text)
    counts: dict[str, int] = {}
    for _, rule in submitted:
        counts[rule] = counts.get(rule, 0) + 1
    assert counts == EXPECTED_JOBS  # fetch is a localrule: it never reaches SLURM
    assert "localrule fetch:" in text

    by_id = {job["JobId"]: job for job in cluster.completed_jobs()}
    for job_id, rule in submitted:
        job = by_id[job_id]
        assert job["JobState"] == "COMPLETED", job
        gpu_rule = rule in ("train", "reference", "evaluate")
        assert job["Partition"] == ("gpu" if gpu_rule else "main"), (rule, job)
        assert int(job["ProcCnt"]) == {"train": 8, "reference": 8, "evaluate": 4, "prepare": 8}.get(rule, 1), (
            rule,
            job,
        )

    cells = sorted((workdir / "results" / "cells").glob("*/*/*/*/metrics.json"))
    assert len(cells) == 3
    for path in cells:
        record = json.loads(path.read_text())["scheduler"]
        assert record["slurm_job_id"] in by_id and record["slurm_partition"] == "gpu"
        assert record["cuda_visible_devices"] == "0"  # the GPU SLURM granted the job
    for out in ("results/summary.csv", "results/tables/main.md", "results/figures/figure4_accuracy.png"):
        assert (workdir / out).stat().st_size > 0, out

    again = run_profile(workdir, cluster, limit=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to be done" in again.stdout + again.stderr
    assert len(cluster.completed_jobs()) == len(by_id)
