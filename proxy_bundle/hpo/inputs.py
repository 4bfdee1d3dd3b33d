"""A search is keyed to its input data: the study records the input fingerprint it was run on.

Re-running ``hpo`` after the data changed (a fixed label file, an edited datalist) must not resume trials
trained on the old data. :func:`check_study_input` runs before the search starts:

* no study yet, or the same fingerprint: the search starts or resumes as usual;
* another fingerprint and no finished trial: the study (and its phase-2 study) is deleted and the search
  starts afresh, so failed trials of the old input are not counted as done;
* another fingerprint and finished trials: refused, because mixing scores from two datasets in one ranking
  would be meaningless (a new ``--study_name`` or ``--work_dir`` keeps both).
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from proxy_bundle.errors import InputError

__all__ = ["check_study_input", "INPUT_ATTR"]

#: Study user attribute holding the input fingerprint (see :mod:`proxy_bundle.inputs`).
INPUT_ATTR = "input_fingerprint"


def check_study_input(url: str, study_name: str, fingerprint: str) -> None:
    """Make study ``study_name`` in ``url`` belong to the input ``fingerprint`` (see the module docstring).

    Raises:
        InputError: the study has finished trials made from other input data.
    """
    from proxy_bundle.hpo.engine import phase2_name
    from proxy_bundle.hpo.storage import open_storage

    storage = open_storage(url)
    # The phase-2 plan locks (``<name>-phase2-plan-<hash>``, see the engine) belong to the search too.
    locks = [s.study_name for s in storage.get_all_studies()
             if s.study_name.startswith(f"{phase2_name(study_name)}-plan-")]
    names = (study_name, phase2_name(study_name), *locks)
    existing = {}
    for name in names:
        try:
            existing[name] = storage.get_study_id_from_name(name)
        except KeyError:
            continue
    have = None
    if study_name in existing:
        have = storage.get_study_user_attrs(existing[study_name]).get(INPUT_ATTR)
    if existing and have is not None and have != fingerprint:
        finished = sum(1 for sid in existing.values() for t in storage.get_all_trials(sid, deepcopy=False)
                       if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
        if finished:
            raise InputError(
                f"this study holds {finished} finished trial(s) made from other input data (the datalist, its files "
                "or the modality changed); pass a new --study_name or --work_dir to search on the new data",
                where=f"study {study_name!r}",
            )
        for name in existing:
            optuna.delete_study(study_name=name, storage=storage)
        print(f"hpo: the input data changed since study {study_name!r} was started and none of its trials "
              "finished: starting it afresh")
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize", load_if_exists=True)
    if study.user_attrs.get(INPUT_ATTR) != fingerprint:
        study.set_user_attr(INPUT_ATTR, fingerprint)
