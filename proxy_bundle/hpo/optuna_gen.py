"""``ProxyOptunaGen``: MONAI's ``OptunaGen`` with proxy fidelity, a default search space and per-epoch pruning.

Drop-in for the way MONAI's HPO tutorial drives ``OptunaGen``::

    gen = ProxyOptunaGen(algo=bundle_generator.get_history()[0]["algo"],
                         fidelity=Fidelity("proxy-both", datalist="proxy_datalist.json", width=0.25))
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner())
    study.optimize(partial(gen, obj_filename=gen.get_obj_filename(), output_folder=out), n_trials=8)

Unlike the stock class it needs no subclass for ``get_hyperparameters`` (the search space, default
:func:`~proxy_bundle.hpo.space.default_space`, is sampled), applies the proxy settings (``proxy#...`` overrides)
to every trial, reports each validation's Dice with ``trial.report`` and stops a trial that the study's pruner
prunes (``optuna.TrialPruned``). Each trial trains in ``output_folder/<algo name>_trial<number>``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import optuna
from monai.apps.auto3dseg import OptunaGen
from monai.auto3dseg import algo_from_json, algo_to_json
from monai.config import PathLike
from monai.utils.enums import AlgoKeys

from proxy_bundle.defaults import PROXY_BLOCKS, PROXY_WIDTH
from proxy_bundle.hpo.runners import AlgoRunner, Fidelity
from proxy_bundle.hpo.space import SearchSpace, load_space, parse_space, suggest

__all__ = ["ProxyOptunaGen", "default_proxy_fidelity"]


def default_proxy_fidelity(algo: Any, width: float = PROXY_WIDTH, blocks: float = PROXY_BLOCKS,
                           levels: int | None = None, epochs: int | None = None) -> Fidelity:
    """Proxy network of ``width`` and, when the algo was filled with a ``proxy_data`` section, its proxy datalist."""
    datalist = None
    records = (getattr(algo, "fill_records", None) or {}).get("hyper_parameters.yaml", {})
    if records.get("proxy#datalist"):
        datalist = str(records["proxy#datalist"])
    elif isinstance(getattr(algo, "proxy_data", None), dict) and algo.proxy_data.get("datalist"):
        datalist = str(algo.proxy_data["datalist"])
    else:
        # MONAI's own templates do not read the proxy_data section; the analysis' datastats.yaml still names it.
        datalist = _datastats_proxy_datalist(getattr(algo, "data_stats_files", None))
    name = "proxy-both" if datalist else "proxy-network"
    return Fidelity(name, datalist=datalist, width=width, blocks=blocks, levels=levels, epochs=epochs)


def _datastats_proxy_datalist(stats_file: Any) -> str | None:
    import yaml

    try:
        section = (yaml.safe_load(Path(str(stats_file)).read_text()) or {}).get("proxy_data") or {}
    except (OSError, TypeError, ValueError, yaml.YAMLError):
        return None
    path = section.get("datalist") if isinstance(section, dict) else None
    if not path:
        return None
    path = Path(str(path))
    if not path.is_absolute():
        path = Path(str(stats_file)).parent / path
    return str(path) if path.is_file() else None


class ProxyOptunaGen(OptunaGen):
    """``OptunaGen`` whose trials train at proxy fidelity and report per-epoch Dice (see module docstring).

    Args:
        algo, params: as ``OptunaGen`` (``params`` are fixed overrides exported into a ``*_override`` copy).
        fidelity: the trials' fidelity; ``None`` uses :func:`default_proxy_fidelity`; ``Fidelity()`` is full.
        space: a :class:`SearchSpace`, a YAML path, or ``None`` for the default segmentation space.
        fold, base_overrides, device_setting: passed to :class:`~proxy_bundle.hpo.runners.AlgoRunner`.
    """

    def __init__(self, algo: Any = None, params: dict | None = None, fidelity: Fidelity | None = None,
                 space: SearchSpace | str | os.PathLike | None = None, fold: int = 0,
                 base_overrides: Mapping[str, Any] | None = None,
                 device_setting: Mapping[str, Any] | None = None) -> None:
        fixed = {k: v for k, v in (params or {}).items() if k != "fill_with_datastats"}
        super().__init__(algo=algo, params=params)
        from proxy_bundle.templates.adapters import adapter_for

        adapter = adapter_for(str(getattr(algo, "name", "") or ""))
        if space is None and adapter is not None:
            # MONAI's own templates: the default space in the template's own setting names.
            self.space = parse_space(adapter.space, source=f"<{adapter.name} default>")
        else:
            self.space = space if isinstance(space, SearchSpace) else load_space(space)
        self.fidelity = fidelity
        self.fold = fold
        # Every trial re-exports the bundle from the data stats, so the fixed params travel as overrides too.
        self.base_overrides = {**fixed, **dict(base_overrides or {})}
        self.device_setting = dict(device_setting) if device_setting else None
        self.params: dict[str, Any] = {}
        self.acc: float | None = None

    def get_hyperparameters(self) -> dict[str, Any]:
        """Sample the search space with the current Optuna trial."""
        return suggest(self.trial, self.space)

    def get_task_id(self) -> str:
        # The stock id joins every parameter into the folder name; with a dozen floats that outgrows file
        # name limits, so the trial number names the folder and overrides.yaml inside records the values.
        return f"_trial{self.trial.number}"

    def run_algo(self, obj_filename: str, output_folder: str = ".", template_path: PathLike | None = None) -> None:
        """Train one trial at proxy fidelity, reporting each validation; raises ``optuna.TrialPruned`` if pruned."""
        if not os.path.isfile(obj_filename):
            raise ValueError(f"{obj_filename} is not found")
        self.algo, _ = algo_from_json(obj_filename, template_path=template_path)
        self.update_params(self.get_hyperparameters())
        fidelity = self.fidelity or default_proxy_fidelity(self.algo)
        runner = AlgoRunner(self.algo, fold=self.fold, base_overrides=self.base_overrides,
                            device_setting=self.device_setting)
        trial = self.trial
        trial.set_user_attr("fidelity", fidelity.to_dict())

        def report(epoch: int, score: float) -> bool:
            trial.report(float(score), int(epoch))
            return trial.should_prune()

        prefix = os.path.basename(str(self.algo.get_output_path())) or runner.name
        trial_dir = Path(output_folder) / f"{prefix}{self.get_task_id()}"
        result = runner.run(self.params, fidelity, trial_dir, report)
        self.algo = runner.last_algo
        self.obj_filename = str(Path(self.algo.get_output_path()) / "algo_object.json")
        trial.set_user_attr("trial_dir", str(trial_dir))
        trial.set_user_attr("wall_s", result.wall_s)
        if result.pruned:
            algo_to_json(self.algo, template_path=self.algo.template_path)
            raise optuna.TrialPruned(f"pruned after epoch {result.scores[-1][0] if result.scores else 0}")
        acc = self.algo.get_score()
        algo_to_json(self.algo, template_path=self.algo.template_path, **{str(AlgoKeys.SCORE): acc})
        self.set_score(acc)
