"""One set of proxy-search defaults, shared by ``hpo``, ``study``, the proxyseg template and the bundles' hpo configs.

The template's ``configs/hyper_parameters.yaml`` (``proxy`` block) and the bundles' ``configs/hpo.json`` cannot
import this module (they run without ``proxy_bundle``), so they repeat the values; ``tests/test_defaults.py``
keeps them equal. How the values were chosen is in the README ("Which search to use") and
``docs/study_results/<task>/report.md``.
"""

from __future__ import annotations

PROXY_WIDTH = 0.25  # proxy-network channel multiplier
PROXY_BLOCKS = 1.0  # proxy-network residual-block multiplier
DATA_FRACTION = 0.25  # proxy-data share of the training cases
TOP_K = 2  # phase-1 configurations retrained at full fidelity
SHORT_FRACTION = 0.25  # short training as the proxy (--proxy short): share of the full run's epochs
