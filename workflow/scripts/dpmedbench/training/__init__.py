"""Training stage: one cell of the grid, (dataset, mechanism, β, seed), from its arrays to a trained model.

Reads the prepared arrays (or a Local-DP copy) and writes
``results/cells/<dataset>/<mechanism>/beta<β>/seed<seed>/{history.csv,best.pt,last.pt,metrics.json}``:
``cell`` (the short pipeline of a cell: load, plan, model, resume, fit, metrics, write), ``plans`` (the plan
interface and registry; the non-private and Local-DP plans), ``dpsgd`` (the DP-SGD plan and its pieces), ``loop``
(epochs, no mechanism, no file I/O), ``checkpoint`` (run state and resume), ``models`` (ResNet-18 and its
normalisation layers) and ``canaries`` (the one-run audit's canaries).

Imports the Local-DP stage, the data stage and the core, never the results.
"""
