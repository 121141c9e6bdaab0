"""DP-SGD: everything the DP-SGD cells run beyond the shared training code, so that an edit here reruns the
DP-SGD cells only.

``plan`` (the registered plan: it composes the pieces below), ``accounting`` (noise calibration, the accountants,
the privacy record's figures), ``sampling`` (Poisson batches of images or of patients, physical chunks), ``step``
(Opacus's optimiser and the one noisy step), ``gradsample`` (the per-example gradient modes) and
``bookkeeping`` (the ``bk`` mode: book-keeping clipping, one rule per layer type).
"""
