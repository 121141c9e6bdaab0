"""Results stage: what the trained cells are worth, from their files only.

Reads each cell's ``best.pt`` and ``metrics.json``; writes its ``evaluation.json`` (``evaluate``, with the
clinical metrics of ``metrics``, the membership audits of ``membership``, the one-run canary audit of
``canaryaudit``, the attacks of ``attacks`` and the statistics of ``stats``), ``results/summary.csv``
(``summary``), tables (``tables``, their file formats in ``formats``), figures (``figures``, ``auditfigures``)
and the report's pages (``report``). Tables and figures are built only from ``summary.csv`` and the cells'
``history.csv``.

Imports every earlier stage and the core; nothing imports it.
"""
