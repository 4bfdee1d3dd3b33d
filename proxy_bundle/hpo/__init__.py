"""Two-phase proxy hyper-parameter search on Optuna (search at proxy fidelity, retrain the top-k at full).

Parts: :mod:`~proxy_bundle.hpo.space` (search spaces), :mod:`~proxy_bundle.hpo.runners` (train one trial),
:mod:`~proxy_bundle.hpo.sampling` (resume-safe samplers, pruners), :mod:`~proxy_bundle.hpo.engine` (the search),
:mod:`~proxy_bundle.hpo.storage` (Optuna RDB storage), :mod:`~proxy_bundle.hpo.results` and
:mod:`~proxy_bundle.hpo.plots` (outputs), :mod:`~proxy_bundle.hpo.api` (run + write),
:mod:`~proxy_bundle.hpo.optuna_gen` (MONAI ``OptunaGen`` integration), :mod:`~proxy_bundle.hpo.command` (CLI).
"""
