"""Local-DP stage: noisy copies of the prepared images, and what an attacker can get back from them.

Reads ``data/prepared/<dataset>/``; writes ``data/ldp/<dataset>/<mechanism>/beta<β>/{train,val}.npy`` +
``privacy.json`` (``mechanisms``: the registry of Local-DP mechanisms; ``noise``: the random draws; ``copies``:
streaming a whole copy to disk), ``results/ldp/.../attack.json`` (``attacks``: re-identification and
reconstruction), and Figure 2 (``figure2``); ``quality`` holds PSNR and SSIM.

Imports only the core.
"""
