"""Benchmarks that print figures (not tests). Run ``make bench`` or::

    PYTHONPATH=workflow/scripts python -m dpmedbench.bench resize [--images 60] [--size 256] [--folder DIR]
    PYTHONPATH=workflow/scripts python -m dpmedbench.bench ldp [--images 1000] [--size 256] [--channels 3]
    PYTHONPATH=workflow/scripts python -m dpmedbench.bench dpsgd [--size 224] [--batch 32] [--modes bk,ew,hooks]
    PYTHONPATH=workflow/scripts python -m dpmedbench.bench equivalence [--device cuda] [--size 224] [--batch 8]
    PYTHONPATH=workflow/scripts python -m dpmedbench.bench cell [--datasets chest_xray,aptos] [--epochs 2]
    PYTHONPATH=workflow/scripts python -m dpmedbench.bench memory [--size 256] [--workers 1,2,4,8]
    PYTHONPATH=workflow/scripts python -m dpmedbench.bench grid [--card-mib 81920] [--epochs 50] [--json FILE]

``dpsgd``, ``cell`` and ``grid`` take ``--json FILE``: a record of what was measured (``device``, ``date``,
``commit``, ``torch``, the settings and the figures: ``dpsgd_step_ratio`` per mode, the median over interleaved
rounds, with ``peak_memory_gib``; ``cell_seconds``; ``grid_minutes``), to keep under ``benchmarks/``.

``tables [FOLDER]`` prints the README's table of every record in FOLDER (default ``benchmarks/``); the README
holds them verbatim, and a test checks that it does.

``grid`` trains the paper's 14 cells (per dataset: the non-private cell, three Local-DP cells that train like it,
three DP-SGD cells) through the real training code on synthetic arrays of the real sizes, each in a fresh process,
packed onto the device as the local profile packs them: as many at once as their declared GPU memory fits in
``--card-mib`` (at most ``--parallel``); it prints each cell's seconds and the grid's wall time.

``memory`` writes the largest images the data stage accepts (a JPEG and a PNG of the pixel limit, each under the
member size limit), decodes each in a fresh process as one prepare worker does, and prints the peak resident
memory of the worker (MiB) and the bound for 1, 2, 4 and 8 workers: a prepare job never holds more than workers x
the larger peak for its images.

``equivalence`` checks, on any device, that each DP-SGD mode's noiseless update is the clipped sum of
per-example gradients: a one-example-at-a-time loop in float64 is the truth; every mode (and the same loop)
is then run in float64, float32 with TF32 off and float32 with TF32 on, and the largest relative error over
the parameter tensors is printed.

``cell`` runs whole cells through the real training code on synthetic arrays of the real datasets' sizes
(chest X-ray 4,700 train images of 256x256x1, APTOS 2,636 of 256x256x3), prints seconds per epoch and images
per second, and projects the wall time of the paper's grid (per dataset: one non-private and three Local-DP
cells, which train alike, and three DP-SGD cells; 50 epochs each).

``ldp`` times materialising a Local-DP copy (laplace_pixel, beta 1; streamed to one int16 .npy, with the
saturation figures and PSNR/SSIM on the default sample of 64 images) against the naive path: ``rng.laplace`` per image,
clip, and one 8-bit PNG per image (as the authors wrote one JPEG per image).

``resize`` times the data stage's decode+resize path against two naive paths on the same images, one
process each, and prints images/s, the ratios and the PSNR between fast and naive outputs:

* ``naive RGB``: ``Image.open().convert("RGB").resize(LANCZOS)``, what torchvision's ``ImageFolder``
  loader (used by the authors) does before any transform;
* ``naive same``: ``Image.open().convert(<output mode>).resize(LANCZOS)`` of the same crop box, a stricter
  baseline that already converts X-rays to one channel.

Without ``--folder`` it uses synthetic X-ray JPEGs with the sizes and file sizes of the real ones
(1000-2400 px, ~150-250 KB, greyscale with some stored as RGB) and fundus PNGs (1600-2400 px wide); with
``--folder`` it uses the .jpeg/.jpg/.png files found there (e.g. a few hundred real images).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .data import bench_ldp, bench_memory, bench_resize, synthetic_images
from .records import record, write_record


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dpmedbench.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("resize", help="decode+resize throughput, fast path vs naive path")
    r.add_argument("--images", type=int, default=60, help="synthetic images per format (default 60)")
    r.add_argument("--size", type=int, default=256, help="output side in pixels (default 256)")
    r.add_argument("--folder", type=Path, help="benchmark the images in this folder instead")
    r.add_argument("--channels", type=int, choices=(1, 3), help="with --folder: 1 (X-ray) or 3 (fundus)")
    ldp = sub.add_parser("ldp", help="materialising a Local-DP copy vs rng.laplace + one PNG per image")
    ldp.add_argument("--images", type=int, default=1000, help="images in the copy (default 1000)")
    ldp.add_argument("--size", type=int, default=256, help="image side (default 256)")
    ldp.add_argument("--channels", type=int, choices=(1, 3), default=3)
    dp = sub.add_parser("dpsgd", help="DP-SGD step time / non-private step time, and peak memory")
    dp.add_argument("--size", type=int, default=224, help="image side (default 224)")
    dp.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    dp.add_argument("--modes", default="bk,ew,hooks,vmap", help="grad_sample_modes to time (default bk,ew,hooks,vmap)")
    dp.add_argument("--steps", type=int, default=5, help="timed steps per process, after one warm-up (default 5)")
    dp.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every mode (default 3)")
    dp.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    dp.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN pick its fastest algorithms")
    dp.add_argument("--profile", metavar="DIR", help="also write a torch.profiler table per mode into DIR")
    dp.add_argument("--bf16", action="store_true", help="bfloat16 autocast (model.precision bf16), SGD too")
    dp.add_argument("--channels-last", action="store_true", help="channels-last weights and inputs, SGD too")
    eq = sub.add_parser("equivalence", help="noiseless DP-SGD updates of each mode vs a float64 per-example loop")
    eq.add_argument("--modes", default="bk,ew,hooks", help="grad_sample_modes to check (default bk,ew,hooks)")
    eq.add_argument("--size", type=int, default=224, help="image side (default 224)")
    eq.add_argument("--batch", type=int, default=8, help="examples (default 8)")
    cell = sub.add_parser("cell", help="seconds per epoch of whole cells at the real sizes; projected grid time")
    cell.add_argument("--datasets", default="chest_xray,aptos", help="datasets (default chest_xray,aptos)")
    cell.add_argument("--epochs", type=int, default=2, help="epochs per cell (default 2; the last one is timed)")
    cell.add_argument("--scale", type=float, default=1.0, help="fraction of the real image counts (default 1)")
    cell.add_argument("--size", type=int, default=256, help="stored image side (default 256)")
    cell.add_argument("--crop", type=int, default=224, help="model input side (default 224)")
    cell.add_argument("--threads", type=int, default=4, help="CPU threads (default 4, as the train rule)")
    cell.add_argument("--batch", type=int, default=128, help="logical batch size (default 128, the paper's)")
    cell.add_argument("--dp-chunks", default="32", help="DP-SGD physical chunk sizes, one cell each (default 32)")
    mem = sub.add_parser("memory", help="peak memory of one prepare worker on the largest images accepted")
    mem.add_argument("--size", type=int, default=256, help="output side in pixels (default 256)")
    mem.add_argument("--workers", default="1,2,4,8", help="worker counts to print the bound for (default 1,2,4,8)")
    grid = sub.add_parser("grid", help="wall time of the paper's grid, cells packed onto one device")
    grid.add_argument("--datasets", default="chest_xray,aptos", help="datasets (default chest_xray,aptos)")
    grid.add_argument("--epochs", type=int, default=50, help="epochs per cell (default 50, the paper's)")
    grid.add_argument("--scale", type=float, default=1.0, help="fraction of the real image counts (default 1)")
    grid.add_argument("--size", type=int, default=256, help="stored image side (default 256)")
    grid.add_argument("--crop", type=int, default=224, help="model input side (default 224)")
    grid.add_argument("--threads", type=int, default=4, help="CPU threads per cell (default 4, as the train rule)")
    grid.add_argument("--batch", type=int, default=128, help="logical batch size (default 128)")
    grid.add_argument("--dp-chunk", type=int, default=32, help="DP-SGD physical chunk (default 32)")
    grid.add_argument("--card-mib", type=int, default=81920, help="GPU memory to pack into (default 81920)")
    grid.add_argument("--parallel", type=int, default=14, help="most cells at once (default 14: all)")
    tables = sub.add_parser("tables", help="the README's tables of the benchmark records in a folder")
    tables.add_argument("folder", nargs="?", default="benchmarks", help="folder of records (default benchmarks)")
    for command in (dp, eq, cell, grid):
        command.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, ...")
    for command in (dp, cell, grid):
        command.add_argument("--json", metavar="FILE", help="also write the figures as a benchmark record")
    return parser


def _run_dpsgd(args: argparse.Namespace) -> None:
    from .dpsgd import bench_dpsgd

    print(
        f"ResNet-18 (GroupNorm), {args.size} px, batch {args.batch}, {args.threads} threads; {args.rounds} "
        f"interleaved rounds (SGD, then each mode; one process each, median of {args.steps} steps); vs SGD: "
        f"median and range over rounds of mode / SGD of the same round; peak: the largest over rounds"
    )
    print(f"{'mode':<10} {'device':<8} {'step ms':>10} {'vs SGD':>9} {'range':>11} {'peak GiB':>10} {'extra GiB':>10}")
    rows = bench_dpsgd(
        size=args.size,
        batch=args.batch,
        modes=args.modes.split(","),
        steps=args.steps,
        threads=args.threads,
        device=args.device,
        rounds=args.rounds,
        cudnn_benchmark=args.cudnn_benchmark,
        profile_dir=args.profile,
        bf16=args.bf16,
        channels_last=args.channels_last,
    )
    keys = ("size", "batch", "modes", "steps", "rounds", "threads", "cudnn_benchmark", "bf16", "channels_last")
    settings = {k: getattr(args, k) for k in keys}
    modes = [m for m in rows if m != "sgd"]
    write_record(
        args.json,
        record(
            "dpsgd",
            args.device,
            settings,
            dpsgd_step_ratio={m: rows[m]["ratio"] for m in modes},
            dpsgd_step_ratio_range={m: [rows[m]["ratio_low"], rows[m]["ratio_high"]] for m in modes},
            step_ms={m: rows[m]["seconds"] * 1e3 for m in rows},
            peak_memory_gib={m: rows[m]["peak_bytes"] / 2**30 for m in rows},
            rounds={m: rows[m]["rounds"] for m in rows},
        ),
    )


def _run_equivalence(args: argparse.Namespace) -> None:
    from .equivalence import dp_equivalence

    print(
        f"DP-SGD with noise 0 vs a per-example loop in float64 (ResNet-18, GroupNorm, {args.size} px, batch "
        f"{args.batch}, two physical chunks, C = median per-example norm): relative error ||got - truth|| / "
        f"||truth||, the largest over parameter tensors and over all parameters; 'loop' is the same loop in "
        f"that precision, 'vs loop' the largest relative error against it"
    )
    print(f"{'precision':<18} {'mode':<8} {'device':<8} {'max rel error':>14} {'rel error':>12} {'vs loop':>12}")
    dp_equivalence(device=args.device, modes=args.modes.split(","), size=args.size, batch=args.batch)


def _run_cell(args: argparse.Namespace) -> None:
    from .cells import bench_cell

    print(
        f"whole cells through the real training code, synthetic arrays of the real sizes x {args.scale}, "
        f"{args.size} px stored, {args.crop} px crop, batch {args.batch}, {args.threads} threads; seconds per "
        f"epoch include evaluating val and test"
    )
    print(
        f"{'dataset':<11} {'cell':<10} {'device':<7} {'train':>6} {'epoch 1 s':>9} {'epoch s':>9} {'img/s':>9} "
        f"{'50 ep min':>10}"
    )
    results = bench_cell(
        datasets=args.datasets.split(","),
        epochs=args.epochs,
        scale=args.scale,
        size=args.size,
        crop=args.crop,
        device=args.device,
        threads=args.threads,
        dp_chunks=[int(c) for c in args.dp_chunks.split(",") if c],
        batch=args.batch,
    )
    keys = ("datasets", "epochs", "scale", "size", "crop", "threads", "batch", "dp_chunks")
    cell_seconds = {d: {k: v for k, v in r.items() if k != "grid_seconds"} for d, r in results.items()}
    sequential = sum(r.get("grid_seconds", 0.0) for r in results.values()) / 60
    write_record(
        args.json,
        record(
            "cell",
            args.device,
            {k: getattr(args, k) for k in keys},
            cell_seconds=cell_seconds,
            grid_minutes_sequential=sequential,
        ),
    )


def _run_grid(args: argparse.Namespace) -> None:
    from .cells import bench_grid

    print(
        f"the paper's grid through the real training code, synthetic arrays of the real sizes x {args.scale}, "
        f"{args.epochs} epochs per cell, packed into {args.card_mib} MiB (at most {args.parallel} at once)"
    )
    figures = bench_grid(
        datasets=args.datasets.split(","),
        epochs=args.epochs,
        scale=args.scale,
        size=args.size,
        crop=args.crop,
        device=args.device,
        threads=args.threads,
        dp_chunk=args.dp_chunk,
        card_mib=args.card_mib,
        parallel=args.parallel,
        batch=args.batch,
    )
    keys = ("datasets", "epochs", "scale", "size", "crop", "threads", "batch", "dp_chunk", "card_mib", "parallel")
    write_record(args.json, record("grid", args.device, {k: getattr(args, k) for k in keys}, **figures))


def _run_ldp(args: argparse.Namespace) -> None:
    print(
        "Local-DP copy, laplace_pixel beta 1, one process, images/s. ours: seeded per-image generators, "
        "int16 .npy streamed in chunks, PSNR/SSIM on 64 images; naive: rng.laplace + one PNG per image"
    )
    print(f"{'images':<14} {'n':>6} {'ours':>12} {'naive':>13} {'ratio':>9}")
    bench_ldp(images=args.images, size=args.size, channels=args.channels)


def _run_resize(args: argparse.Namespace) -> None:
    print(
        f"decode + resize to {args.size}x{args.size}, images/s on one process. fast: dp-medbench; naive RGB: "
        f"Image.open().convert('RGB').resize(LANCZOS) (torchvision ImageFolder loader); naive same: "
        f"convert to the output mode (L for X-rays), same crop. PSNR: fast vs naive same."
    )
    print(
        f"{'images':<24} {'n':>4} {'KB':>6} {'fast':>9} {'naive RGB':>10} {'ratio':>8} {'naive same':>11} "
        f"{'ratio':>8} {'PSNR':>10}"
    )
    if args.folder:
        files = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in {".jpeg", ".jpg", ".png"})
        files = [p for p in files if not p.name.startswith("._")]
        if not files:
            raise SystemExit(f"{args.folder}: no .jpeg/.jpg/.png files")
        channels = args.channels or (1 if files[0].suffix.lower() in {".jpeg", ".jpg"} else 3)
        bench_resize([p.read_bytes() for p in files], size=args.size, channels=channels, label=str(args.folder))
        return
    bench_resize(synthetic_images("xray-jpeg", args.images), size=args.size, channels=1, label="X-ray JPEG (synthetic)")
    fundus = synthetic_images("fundus-png", max(4, args.images // 3))
    bench_resize(fundus, size=args.size, channels=3, label="fundus PNG (synthetic)")


def _run_memory(args: argparse.Namespace) -> None:
    import tempfile

    workers = tuple(int(n) for n in args.workers.split(","))
    print(
        f"one prepare worker decoding the largest image accepted, to {args.size}x{args.size}, in a fresh process: "
        f"MB of the file, seconds, peak resident MiB of the worker (Python, libraries, the file's bytes and the "
        f"decode) and what decoding added to it; the bound for that many workers (MiB)"
    )
    print(f"{'image':<32} {'MB':>7} {'s':>6} {'peak':>8} {'decode':>8}   bound")
    with tempfile.TemporaryDirectory() as folder:
        bench_memory(size=args.size, workers=workers, folder=Path(folder))


def _run_tables(args: argparse.Namespace) -> None:
    from .records import render_folder

    for name, text in render_folder(args.folder).items():
        print(f"<!-- {args.folder}/{name} -->\n{text}\n")


COMMANDS = {
    "tables": _run_tables,
    "grid": _run_grid,
    "memory": _run_memory,
    "resize": _run_resize,
    "ldp": _run_ldp,
    "dpsgd": _run_dpsgd,
    "equivalence": _run_equivalence,
    "cell": _run_cell,
}


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    COMMANDS[args.command](args)


if __name__ == "__main__":
    main()
