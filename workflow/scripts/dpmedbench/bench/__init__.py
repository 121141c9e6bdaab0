"""Benchmarks that print figures (not tests): ``python -m dpmedbench.bench <command>``, see ``bench.cli``.

``data`` times the data stage's decode and resize and the Local-DP copies; ``dpsgd`` the DP-SGD step against a
non-private one; ``equivalence`` checks each DP-SGD mode against a per-example loop on any device; ``cells`` trains
whole cells at the real sizes. Imports any stage; nothing imports it.
"""
