"""dp-medbench: reproduce and audit differentially private ResNets on medical images.

The package holds every piece of domain logic of the pipeline; the Snakemake scripts next to it only
pass ``snakemake.input/output/params`` to the functions here.
"""

__version__ = "0.1.0"
