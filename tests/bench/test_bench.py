"""The benchmark command runs and prints its table (its figures are not asserted: they are measurements)."""

import datetime as dt
import json

import pytest
import torch
from dpmedbench.bench import cli, equivalence
from dpmedbench.bench.cells import grid_jobs, pack
from dpmedbench.bench.data import synthetic_images


def test_resize_benchmark_prints_a_table(capsys):
    cli.main(["resize", "--images", "3", "--size", "64"])
    out = capsys.readouterr().out
    assert "X-ray JPEG (synthetic)" in out and "fundus PNG (synthetic)" in out and "naive RGB" in out


def test_resize_benchmark_on_a_folder(tmp_path, capsys):
    for i, data in enumerate(synthetic_images("xray-jpeg", 3)):
        (tmp_path / f"person{i}_virus_{i}.jpeg").write_bytes(data)
    cli.main(["resize", "--folder", str(tmp_path), "--size", "64"])
    assert str(tmp_path) in capsys.readouterr().out


def test_ldp_benchmark_prints_a_table(capsys):
    cli.main(["ldp", "--images", "12", "--size", "16", "--channels", "1"])
    out = capsys.readouterr().out
    assert "naive: rng.laplace + one PNG per image" in out and "16x16x1" in out


def test_dpsgd_benchmark_prints_a_table_and_writes_its_record(capsys, tmp_path):
    args = ["--size", "16", "--batch", "2", "--steps", "1", "--modes", "bk,ew", "--threads", "1", "--rounds", "2"]
    cli.main(["dpsgd", *args, "--json", str(tmp_path / "dpsgd.json")])
    out = capsys.readouterr().out
    assert "vs SGD" in out and "\nsgd " in out and "\nbk " in out and "\new " in out and "failed" not in out
    rec = json.loads((tmp_path / "dpsgd.json").read_text())
    assert rec["benchmark"] == "dpsgd" and rec["device"].startswith("CPU: ") and rec["torch"] == torch.__version__
    assert rec["date"] == dt.date.today().isoformat() and (rec["commit"] is None or len(rec["commit"]) >= 40)
    assert set(rec["dpsgd_step_ratio"]) == {"bk", "ew"} and all(r > 0 for r in rec["dpsgd_step_ratio"].values())
    assert set(rec["peak_memory_gib"]) == {"sgd", "bk", "ew"} and rec["rounds"] == {"sgd": 2, "bk": 2, "ew": 2}
    assert rec["settings"]["batch"] == 2


def test_equivalence_check_finds_every_mode_equal_to_the_per_example_loop(capsys):
    rows = equivalence.dp_equivalence(device="cpu", modes=["bk", "ew"], size=24, batch=4)
    out = capsys.readouterr().out
    assert "float32, TF32 on" in out and "\nfloat64            bk " in out
    by = {(r["precision"], r["mode"]): r for r in rows}
    assert set(by) == {(p, m) for p, _, _ in equivalence.PRECISIONS for m in ("loop", "bk", "ew")}
    for mode in ("bk", "ew"):
        assert by["float64", mode]["max_rel_error"] < 1e-12
        assert by["float32, TF32 off", mode]["vs_loop"] < 1e-4
    assert 0 < by["float32, TF32 off", "loop"]["max_rel_error"] < 1e-3  # float32 alone, against the float64 truth


def test_cell_benchmark_trains_real_cells_and_projects_the_grid(capsys, tmp_path):
    args = ["--scale", "0.005", "--size", "36", "--crop", "32", "--epochs", "2", "--batch", "8", "--dp-chunks", "4,8"]
    cli.main(["cell", *args, "--threads", "1", "--device", "cpu", "--json", str(tmp_path / "cell.json")])
    out = capsys.readouterr().out
    assert "projected grid (chest_xray, aptos" in out
    rec = json.loads((tmp_path / "cell.json").read_text())
    assert set(rec["cell_seconds"]["aptos"]) == {"none", "dpsgd/4", "dpsgd/8"} and rec["grid_minutes_sequential"] > 0
    for dataset in ("chest_xray", "aptos"):
        for cell in ("none", "dpsgd/4", "dpsgd/8"):
            assert f"\n{dataset:<11} {cell:<10} cpu" in out


def test_memory_benchmark_prints_the_bound_per_worker_count(capsys, monkeypatch):
    from dpmedbench.data import imaging

    monkeypatch.setattr(imaging, "MAX_PIXELS", 120_000)  # the real limit makes 40 Mpx images: seconds, not a test
    cli.main(["memory", "--size", "32", "--workers", "1,3"])
    out = capsys.readouterr().out
    assert "JPEG, 1 channel, 400 x 300" in out and "PNG, 3 channels, 400 x 300" in out and " 3: " in out


def test_the_grid_is_packed_by_declared_gpu_memory():
    """The packing alone, with fake cells that end when told: 80 GiB hold the 14 cells of the paper's grid."""
    jobs = grid_jobs(["chest_xray", "aptos"], betas=3, dp_chunk=32, crop=224)
    assert len(jobs) == 14 and sum(j["gpu_mem_mb"] for j in jobs) <= 81920
    ends = iter(range(10**6))

    def run(card_mib, parallel=14):
        state = {"running": 0, "most": 0}

        def start(job):
            state["running"] += 1
            state["most"] = max(state["most"], state["running"])
            return {"ends_at": next(ends) + 3}

        def poll(handle):
            if next(ends) >= handle["ends_at"]:
                state["running"] -= 1
                return True
            return False

        seconds, most = pack(jobs, card_mib=card_mib, parallel=parallel, start=start, poll=poll)
        assert most == state["most"] and seconds >= 0
        return most

    assert run(81920) == 14
    assert run(10000) == 3  # two non-private cells (4,621 MiB each) fit in 10,000 MiB, or three DP-SGD ones (2,778)
    assert run(5000) == 1
    assert run(81920, parallel=4) == 4
    with pytest.raises(SystemExit, match="needs 4621 MiB, more than the card's 4000"):
        run(4000)


def test_grid_benchmark_trains_the_grid_and_writes_its_record(capsys, tmp_path):
    args = ["--datasets", "chest_xray", "--epochs", "1", "--scale", "0.01", "--size", "32", "--crop", "32"]
    cli.main(["grid", *args, "--batch", "16", "--threads", "1", "--device", "cpu", "--json", str(tmp_path / "g.json")])
    out = capsys.readouterr().out
    assert "chest_xray/dpsgd3" in out and "grid: 7 cells, 1 epochs each" in out
    rec = json.loads((tmp_path / "g.json").read_text())
    assert rec["benchmark"] == "grid" and rec["cells"] == 7 and rec["grid_minutes"] > 0 and rec["most_at_once"] >= 2


def test_the_readme_holds_every_committed_record_as_rendered():
    """The README's benchmark tables are generated from the records under benchmarks/ (bench tables)."""
    from dpmedbench.bench.records import render_folder

    from ..conftest import REPO

    readme = (REPO / "README.md").read_text()
    records = render_folder(REPO / "benchmarks")
    assert records, "no benchmark record is committed"
    for name, text in records.items():
        assert f"<!-- benchmarks/{name} -->\n{text}\n" in readme, f"README: the table of benchmarks/{name} is stale"
