"""Benchmark records: what a benchmark measured, on which machine, from which commit, as one JSON file
(``--json FILE``), so that figures in the README can be regenerated from committed records and compared only
where the device is the same."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from ..core.fileio import write_json

REPO = Path(__file__).resolve().parents[4]


def describe_device(device: str) -> str:
    """The device in words: a GPU's name, or the CPU's model and its core count."""
    import torch

    from ..core.runtime import pick_device

    dev = pick_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            name = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU: {name}, {os.cpu_count()} logical cores"


def commit() -> str | None:
    """The commit the benchmark ran from, with ``+dirty`` when the work tree had changes; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(  # changes to tracked files (a record being written is not one)
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.strip() else "")


def record(benchmark: str, device: str, settings: dict[str, Any], **figures: Any) -> dict[str, Any]:
    """One benchmark record: ``benchmark``, ``device``, ``date``, ``commit``, ``torch``, ``settings`` and the
    ``figures`` measured."""
    import torch

    return {
        "benchmark": benchmark,
        "device": describe_device(device),
        "date": dt.date.today().isoformat(),
        "commit": commit(),
        "torch": torch.__version__,
        "settings": settings,
        **figures,
    }


def write_record(path: str | os.PathLike[str] | None, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` (nothing when ``path`` is None) and say where."""
    if path is None:
        return
    write_json(path, data)
    print(f"record written to {path}", flush=True)


def _heading(rec: dict[str, Any]) -> str:
    settings = ", ".join(f"{k} {v}" for k, v in rec["settings"].items())
    commit_text = rec.get("commit") or "no commit"
    commit_text = commit_text[:12] + ("+dirty" if commit_text.endswith("+dirty") else "")
    return f"*{rec['device']}, {rec['date']}, torch {rec['torch']}, commit {commit_text}; {settings}.*"


def _dpsgd_table(rec: dict[str, Any]) -> list[str]:
    rows = ["| mode | step | vs SGD (median of rounds) | range | peak memory |", "|---|---|---|---|---|"]
    for mode in rec["step_ms"]:
        ratio = rec["dpsgd_step_ratio"].get(mode)
        low, high = rec["dpsgd_step_ratio_range"].get(mode, (None, None))
        vs = "1.00×" if mode == "sgd" else f"**{ratio:.2f}×**"
        spread = "–" if mode == "sgd" else f"{low:.2f}–{high:.2f}×"
        name = "SGD (non-private)" if mode == "sgd" else f"`{mode}`"
        rows.append(
            f"| {name} | {rec['step_ms'][mode]:,.1f} ms | {vs} | {spread} | {rec['peak_memory_gib'][mode]:.2f} GiB |"
        )
    return rows


def _cell_table(rec: dict[str, Any]) -> list[str]:
    rows = ["| dataset | cell | seconds per epoch |", "|---|---|---|"]
    for dataset, cells in rec["cell_seconds"].items():
        rows += [f"| {dataset} | {cell} | {seconds:.2f} |" for cell, seconds in cells.items()]
    rows.append(f"| | the paper's grid, one cell after another | {rec['grid_minutes_sequential']:.1f} min |")
    return rows


def _grid_table(rec: dict[str, Any]) -> list[str]:
    return [
        "| cells | most at once | wall time |",
        "|---|---|---|",
        f"| {rec['cells']} | {rec['most_at_once']} | {rec['grid_minutes']:.1f} min |",
    ]


TABLES = {"dpsgd": _dpsgd_table, "cell": _cell_table, "grid": _grid_table}


def render(rec: dict[str, Any]) -> str:
    """A record as the README shows it: a line saying where and when it was measured, then its table."""
    return "\n".join([_heading(rec), "", *TABLES[rec["benchmark"]](rec)])


def render_folder(folder: str | os.PathLike[str]) -> dict[str, str]:
    """``{file name: rendered record}`` of every ``*.json`` record in ``folder``, sorted by name."""
    import json

    return {p.name: render(json.loads(p.read_text())) for p in sorted(Path(folder).glob("*.json"))}
