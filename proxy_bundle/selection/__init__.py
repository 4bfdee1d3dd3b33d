"""Proxy data: score training cases by image similarity (MI / NCC) and select a subset for hyper-parameter search.

Modules: :mod:`~proxy_bundle.selection.similarity` (all-pairs metrics), :mod:`~proxy_bundle.selection.preprocess`
(cases onto a common proxy grid), :mod:`~proxy_bundle.selection.strategies` (which cases to keep),
:mod:`~proxy_bundle.selection.subset` (the ``select`` command) and :mod:`~proxy_bundle.selection.analyzer`
(the Auto3DSeg data-analyzer hook, ``analyze`` command).
"""

from __future__ import annotations

from proxy_bundle.selection.subset import Selection, run_selection, select, write_selection

__all__ = ["Selection", "run_selection", "select", "write_selection"]
