"""dp-medbench: reproduce and audit differentially private ResNets on medical images.

The package holds every piece of domain logic of the pipeline, one subpackage per stage, in the order data flows
(each imports only those before it): ``core`` (shared pieces), ``data`` (archives to prepared arrays), ``ldp``
(Local-DP copies and the attacks on them), ``training`` (one cell of the grid), ``results`` (evaluation, audits,
summary, tables, figures, the report's pages). ``bench`` holds the benchmarks and ``preflight`` the pre-flight
check (``make check``). The Snakemake scripts next to the package only pass ``snakemake.input/output/params`` to
the functions here.
"""

__version__ = "0.1.0"
