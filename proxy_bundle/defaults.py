"""One set of proxy-search defaults, shared by ``hpo``, ``study``, the proxyseg template and the bundles' hpo configs.

The template's ``configs/hyper_parameters.yaml`` (``proxy`` block) and the bundles' ``configs/hpo.json`` cannot
import this module (they run without ``proxy_bundle``), so they repeat the values; ``tests/test_defaults.py``
keeps them equal.

How they were chosen: the tabular benchmark (``python -m proxy_bundle study``, K=24 configurations x 13
fidelities per task, ``docs/study_results/<task>/``) replays every search method; the default method is the one
with the lowest expected regret at 1/8 of the full-fidelity search's cost averaged over spleen_ct and
prostate_mr: two-phase search with *short training* as the proxy (a quarter of the epochs, full data and
network), top-3 retrained (0.026 Dice; Hyperband at full fidelity 0.030, best on prostate_mr alone; the 95%
bands overlap). Among proxy networks, width 0.5 ranks configurations better than 0.25 on both tasks.
"""

from __future__ import annotations

PROXY_MODE = "short"  # hpo --proxy: what phase 1 shrinks (none, data, network, both, short)
SHORT_FRACTION = 0.25  # short training as the proxy: share of the full run's epochs
TOP_K = 3  # phase-1 configurations retrained at full fidelity
PROXY_WIDTH = 0.5  # proxy-network channel multiplier (--proxy network|both)
PROXY_BLOCKS = 1.0  # proxy-network residual-block multiplier
DATA_FRACTION = 0.25  # proxy-data share of the training cases (--proxy data|both)
