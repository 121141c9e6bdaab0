"""``python -m dpmedbench.bench <command>``: the benchmarks' command line (:mod:`dpmedbench.bench.cli`)."""

from .cli import main

main()
