"""The benchmark command runs and prints its table (its figures are not asserted: they are measurements)."""

from dpmedbench.bench import cli, equivalence
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


def test_dpsgd_benchmark_prints_a_table(capsys):
    cli.main(["dpsgd", "--size", "16", "--batch", "2", "--steps", "1", "--modes", "bk,ew", "--threads", "1"])
    out = capsys.readouterr().out
    assert "vs SGD" in out and "\nsgd " in out and "\nbk " in out and "\new " in out and "failed" not in out


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


def test_cell_benchmark_trains_real_cells_and_projects_the_grid(capsys):
    args = ["--scale", "0.005", "--size", "36", "--crop", "32", "--epochs", "2", "--batch", "8", "--dp-chunks", "4,8"]
    cli.main(["cell", *args, "--threads", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "projected grid (chest_xray, aptos" in out
    for dataset in ("chest_xray", "aptos"):
        for cell in ("none", "dpsgd/4", "dpsgd/8"):
            assert f"\n{dataset:<11} {cell:<10} cpu" in out


def test_memory_benchmark_prints_the_bound_per_worker_count(capsys, monkeypatch):
    from dpmedbench.data import imaging

    monkeypatch.setattr(imaging, "MAX_PIXELS", 120_000)  # the real limit makes 40 Mpx images: seconds, not a test
    cli.main(["memory", "--size", "32", "--workers", "1,3"])
    out = capsys.readouterr().out
    assert "JPEG, 1 channel, 400 x 300" in out and "PNG, 3 channels, 400 x 300" in out and " 3: " in out
