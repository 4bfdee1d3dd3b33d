"""The command-line vocabulary shared by every command: one name and one set of values per concept.

Flag names follow MONAI, PyTorch, Optuna and Auto3DSeg: ``--num_workers`` is always DataLoader worker processes
(``torch.utils.data.DataLoader(num_workers=...)``), ``--n_jobs`` parallel jobs (trials or files, as Optuna's
``study.optimize(n_jobs=...)``), ``--n_trials`` Optuna trials, ``--data_fraction`` the proxy data size as a fraction
of the training candidates, ``--similarity`` the image similarity metric of proxy-data selection, ``--mode`` what
selection compares, ``--strategy`` how it picks, ``--fold`` the validation fold, ``--seed`` the seed, ``--work_dir``
the Auto3DSeg work directory. The ``Literal`` types below are read by the command-line parser, so a value outside
them is refused before any work; the functions check them again for callers from Python.
"""

from __future__ import annotations

from typing import Literal, get_args

Similarity = Literal["mi", "nmi", "ncc"]
SelectionMode = Literal["roi", "image"]
Strategy = Literal["representative", "diverse", "coverage", "random"]
ProxyMode = Literal["none", "data", "network", "both", "short"]
Network = Literal["segresnetds", "segresnet", "unet", "dynunet", "swinunetr"]
CostMetric = Literal["flops", "params"]
PhantomTask = Literal["spleen_ct", "prostate_mr"]

SIMILARITIES: tuple[str, ...] = get_args(Similarity)
SELECTION_MODES: tuple[str, ...] = get_args(SelectionMode)
STRATEGIES: tuple[str, ...] = get_args(Strategy)
PROXY_MODES: tuple[str, ...] = get_args(ProxyMode)
