"""Search spaces: which template settings a search varies, and how.

A space is a mapping from a ``hyper_parameters.yaml`` override id (ConfigParser ids, nested with ``#``) to a
parameter spec. In YAML (optionally under a top-level ``parameters:`` key)::

    learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    "loss#ce_weight": {type: float, low: 0.0, high: 1.0}
    batch_size: {type: int, low: 1, high: 4}
    "network#init_filters": {type: categorical, choices: [16, 32]}

:func:`suggest` asks an Optuna trial for one value per parameter and returns ``{override id: value}``, ready to be
applied to the template.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from proxy_bundle.errors import InputError

__all__ = ["Param", "SearchSpace", "default_space", "load_space", "parse_space", "suggest"]

_TYPES = ("float", "int", "categorical")
_KEYS = {"type", "low", "high", "log", "step", "choices"}


@dataclass(frozen=True)
class Param:
    """One searched setting; ``name`` is the override id (e.g. ``augment#prob_flip``)."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of :class:`Param`; ``source`` names where it came from (for messages and provenance)."""

    params: tuple[Param, ...]
    source: str = "<default>"
    _names: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_names", frozenset(p.name for p in self.params))

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def __iter__(self):
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {p.name: p.to_dict() for p in self.params}


# Ranges that make sense for a Dice+CE trained 3D segmentation network with AdamW. The learning rate spans a
# decade around the template's 1e-3: at 1e-2 SegResNet collapses to background within a short budget, and below
# 3e-4 a short trial is still learning the background when it ends (benchmarks/bench_learnability.py). The
# augmentation probabilities stop at 0.5: beyond that most training patches are transformed and small-data runs degrade.
_DEFAULT: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-3, "log": True},
    "loss#dice_weight": {"type": "float", "low": 0.5, "high": 1.5},
    # Cross-entropy never drops out: Dice alone (background included) sits at "all background" for the whole
    # of a short trial, which the search would read as a bad configuration rather than a slow start.
    "loss#ce_weight": {"type": "float", "low": 0.5, "high": 1.5},
    "augment#prob_flip": {"type": "float", "low": 0.0, "high": 0.5},
    "augment#prob_rotate": {"type": "float", "low": 0.0, "high": 0.5},
    "augment#prob_scale": {"type": "float", "low": 0.0, "high": 0.5},
    "augment#prob_intensity_scale": {"type": "float", "low": 0.0, "high": 0.5},
    "augment#prob_intensity_shift": {"type": "float", "low": 0.0, "high": 0.5},
    "augment#prob_noise": {"type": "float", "low": 0.0, "high": 0.5},
}


def default_space() -> SearchSpace:
    """The default segmentation space: learning rate, weight decay, loss weights, augmentation probabilities."""
    return parse_space(_DEFAULT, source="<default>")


def load_space(path: str | os.PathLike | None) -> SearchSpace:
    """Read a space from YAML; ``None`` gives :func:`default_space`. Errors name the file and parameter."""
    if path is None:
        return default_space()
    p = Path(path)
    if not p.is_file():
        raise InputError("search space file not found", where=str(p))
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"not valid YAML ({err.__class__.__name__}: {str(err).splitlines()[0]})", where=str(p)) from None
    return parse_space(data, source=str(p))


def parse_space(data: Any, source: str = "<space>") -> SearchSpace:
    """Validate a space mapping (see module docstring) and return it as a :class:`SearchSpace`."""
    if isinstance(data, Mapping) and set(data) == {"parameters"}:
        data = data["parameters"]
    if not isinstance(data, Mapping) or not data:
        raise InputError("a search space must be a non-empty mapping of parameter id -> spec", where=source)
    return SearchSpace(tuple(_parse_param(str(name), spec, source) for name, spec in data.items()), source=source)


def _parse_param(name: str, spec: Any, source: str) -> Param:
    where = f"{source}: {name}"
    if not isinstance(spec, Mapping):
        raise InputError("spec must be a mapping with at least 'type'", where=where)
    unknown = set(spec) - _KEYS
    if unknown:
        raise InputError(f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}", where=where)
    kind = spec.get("type")
    if kind not in _TYPES:
        raise InputError(f"unknown type {kind!r}; use one of {list(_TYPES)}", where=where)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, Sequence) or isinstance(choices, str) or len(choices) == 0:
            raise InputError("categorical needs a non-empty list 'choices'", where=where)
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise InputError(f"choice {c!r} is not a scalar (None, bool, int, float or str)", where=where)
        if len(set(map(repr, choices))) != len(choices):
            raise InputError("choices contain duplicates", where=where)
        extra = {"low", "high", "log", "step"} & set(spec)
        if extra:
            raise InputError(f"categorical takes only 'choices', not {sorted(extra)}", where=where)
        return Param(name, kind, choices=tuple(choices))
    if "choices" in spec:
        raise InputError(f"'choices' is only for type categorical, not {kind}", where=where)
    low, high = spec.get("low"), spec.get("high")
    for key, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"'{key}' must be a finite number, got {value!r}", where=where)
        if kind == "int" and int(value) != value:
            raise InputError(f"'{key}' must be an integer for type int, got {value!r}", where=where)
    if low >= high:
        raise InputError(f"low ({low}) must be < high ({high})", where=where)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise InputError(f"'log' must be true or false, got {log!r}", where=where)
    if log and low <= 0:
        raise InputError(f"log scale needs low > 0, got low={low}", where=where)
    step = spec.get("step")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0:
            raise InputError(f"'step' must be a positive number, got {step!r}", where=where)
        if kind == "int" and int(step) != step:
            raise InputError(f"'step' must be an integer for type int, got {step!r}", where=where)
        if log:
            # Optuna cannot combine a step with log sampling.
            raise InputError("'step' cannot be combined with log: true", where=where)
        if step > high - low:
            raise InputError(f"step ({step}) is larger than the range high - low ({high - low})", where=where)
    if kind == "int":
        return Param(name, kind, int(low), int(high), log, None if step is None else int(step))
    return Param(name, kind, float(low), float(high), log, None if step is None else float(step))


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """Ask an Optuna trial (or anything with ``suggest_float/int/categorical``) for one value per parameter."""
    out: dict[str, Any] = {}
    for p in space:
        if p.type == "float":
            out[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            out[p.name] = trial.suggest_int(p.name, p.low, p.high, log=p.log, step=1 if p.step is None else p.step)
        else:
            out[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    return out
