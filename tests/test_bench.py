"""The benchmark command runs and prints its table (its figures are not asserted: they are measurements)."""

from dpmedbench import bench


def test_resize_benchmark_prints_a_table(capsys):
    bench.main(["resize", "--images", "3", "--size", "64"])
    out = capsys.readouterr().out
    assert "X-ray JPEG (synthetic)" in out and "fundus PNG (synthetic)" in out and "naive RGB" in out


def test_resize_benchmark_on_a_folder(tmp_path, capsys):
    for i, data in enumerate(bench.synthetic_images("xray-jpeg", 3)):
        (tmp_path / f"person{i}_virus_{i}.jpeg").write_bytes(data)
    bench.main(["resize", "--folder", str(tmp_path), "--size", "64"])
    assert str(tmp_path) in capsys.readouterr().out


def test_ldp_benchmark_prints_a_table(capsys):
    bench.main(["ldp", "--images", "12", "--size", "16", "--channels", "1"])
    out = capsys.readouterr().out
    assert "naive: rng.laplace + one PNG per image" in out and "16x16x1" in out


def test_dpsgd_benchmark_prints_a_table(capsys):
    bench.main(["dpsgd", "--size", "16", "--batch", "2", "--steps", "1", "--modes", "bk,ew", "--threads", "1"])
    out = capsys.readouterr().out
    assert "vs SGD" in out and "\nsgd " in out and "\nbk " in out and "\new " in out and "failed" not in out
