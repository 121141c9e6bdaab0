"""Shared core: what every stage uses and nothing stage-specific.

Errors (``errors``), atomic file writes and digests (``fileio``), names shared with the workflow (``names``,
standard library only: the Snakefile imports it while it builds the job graph), the configuration and its schema
(``config``), the cell settings (``settings``), the one privacy-record type (``privacy``), seeds and the runtime
(``seeds``, ``runtime``: device, threads, versions, signals), splits on the device and the one inference loop
(``tensors``), logging for scripts (``logs``), the end-of-run messages (``console``), the figure writer
(``plotting``) and the code digests that make an edit rerun exactly the jobs it affects (``digest``).

Reads and writes no pipeline file of its own; it imports nothing from the stages.
"""
