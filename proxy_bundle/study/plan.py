"""What a study trains: K sampled configurations x a list of fidelity variants (a tabular benchmark).

Every configuration is trained at every variant, with its per-epoch validation curve stored, so that
search methods can be replayed from the table afterwards (HPOBench / NAS-Bench style tabular benchmarks:
Eggensperger et al., NeurIPS 2021 Datasets and Benchmarks; Ying et al., ICML 2019). Variants (``family``):

* ``reference``: full network, full training data, ``epochs`` epochs. Every other variant is compared with it.
* ``repeat``: the reference again with another training seed. Its agreement with the reference is the noise
  ceiling: no proxy can be expected to rank configurations better than a second run of the reference itself.
* ``network``: the proxy network at each width multiplier of ``widths`` (``network-w0.5``, ...), full data.
* ``data``: full network, a proxy subset (``fraction`` of the training cases) per ``metric-strategy`` pair.
* ``random``: full network, a random subset of the same size, one variant per seed (the spread a
  similarity-selected subset has to beat).
* ``both``: the proxy network at ``both_width`` and the subset ``both_data``.
* ``short``: full network and full data for ``max(1, round(epochs * b))`` epochs per budget ``b`` of
  ``short_budgets``: shorter training as the proxy (and the equal-cost baseline a proxy has to beat).

Configurations are sampled with Optuna's seeded ``RandomSampler`` from the search space, so the same
seed always gives the same K configurations, and a larger K extends a table without changing its first rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import optuna

from proxy_bundle.errors import InputError

KNOWN_METRICS: tuple[str, ...] = ("mi", "nmi", "ncc")
STRATEGIES: tuple[str, ...] = ("representative", "diverse", "coverage")
# The selections kept from the 8-configuration CPU studies: the best MI strategies on spleen (coverage) and
# prostate (representative), and the best NCC one on prostate's external set (representative).
PROXY_DATA: tuple[str, ...] = ("mi-representative", "mi-coverage", "ncc-representative")
WIDTHS: tuple[float, ...] = (0.5, 0.25)
SHORT_BUDGETS: tuple[float, ...] = (0.25, 0.5)
FAMILIES: tuple[str, ...] = ("reference", "repeat", "network", "data", "random", "both", "short")
REPEAT_SEED = 12345 + 1000  # training seed of the repeat variant (the template's default seed is 12345)


@dataclass(frozen=True)
class Variant:
    """One fidelity at which every configuration is trained."""

    name: str
    family: str
    width: float | None = None  # proxy-network channel multiplier (None: the full network)
    metric: str | None = None  # selection metric of the proxy subset (None: full data)
    strategy: str | None = None  # selection strategy (``random`` for the random subsets)
    seed: int = 0  # selection seed (only matters for ``random``)
    epochs: int = 1
    train_seed: int | None = None  # training seed override (None: the template's)

    @property
    def proxy_network(self) -> bool:
        return self.width is not None

    @property
    def proxy_data(self) -> bool:
        return self.strategy is not None

    @property
    def subset(self) -> str | None:
        """Key of the training subset this variant uses (shared by variants with the same subset)."""
        if self.strategy is None:
            return None
        if self.strategy == "random":
            return f"random-s{self.seed}"
        return f"{self.metric}-{self.strategy}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Config:
    """One sampled hyper-parameter configuration (template override keys -> values)."""

    id: str
    params: dict[str, Any] = field(default_factory=dict)


def short_epochs(epochs: int, budget: float) -> int:
    """Epochs of a short-training variant: ``budget`` of the full training, at least one epoch."""
    return max(1, int(round(epochs * budget)))


def _pair(text: str, what: str) -> tuple[str, str]:
    metric, _, strategy = str(text).partition("-")
    if metric not in KNOWN_METRICS or strategy not in STRATEGIES + ("random",):
        raise InputError(f"{what} must be '<metric>-<strategy>' with metric in {', '.join(KNOWN_METRICS)} and "
                         f"strategy in {', '.join(STRATEGIES)}, got {text!r}", where="study")
    return metric, strategy


def build_variants(
    epochs: int,
    fraction: float,
    proxy_data: Sequence[str] = PROXY_DATA,
    random_seeds: Sequence[int] = (0, 1, 2),
    widths: Sequence[float] = WIDTHS,
    both_width: float | None = None,
    both_data: str = "mi-representative",
    short_budgets: Sequence[float] = SHORT_BUDGETS,
    include: Iterable[str] | None = None,
) -> list[Variant]:
    """The study's variants in training order (reference first).

    ``include`` selects variants by name or family (default: every family); the reference is always kept
    because every number is relative to it. ``both_width`` defaults to the smallest of ``widths``.

    Raises:
        InputError: epochs < 1, fraction outside (0, 1], a width or budget outside (0, 1], an unknown pair.
    """
    if epochs < 1:
        raise InputError(f"epochs must be >= 1, got {epochs}", where="study")
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction}", where="study")
    for x, what in [(w, "width") for w in widths] + [(b, "short budget") for b in short_budgets]:
        if not 0 < float(x) <= 1:
            raise InputError(f"{what} must be in (0, 1], got {x}", where="study")
    pairs = [_pair(p, "proxy_data") for p in proxy_data]
    both_metric, both_strategy = _pair(both_data, "both_data")
    bw = float(both_width) if both_width is not None else (min(widths) if widths else 0.5)

    out = [Variant("reference", "reference", epochs=epochs),
           Variant("repeat", "repeat", epochs=epochs, train_seed=REPEAT_SEED)]
    out += [Variant(f"network-w{float(w):g}", "network", width=float(w), epochs=epochs) for w in widths]
    out += [Variant(f"data-{m}-{s}", "data", metric=m, strategy=s, epochs=epochs) for m, s in pairs]
    out += [Variant(f"random-s{seed}", "random", metric="mi", strategy="random", seed=int(seed), epochs=epochs)
            for seed in random_seeds]
    out.append(Variant("both", "both", width=bw, metric=both_metric, strategy=both_strategy, epochs=epochs))
    shorts: dict[int, Variant] = {}
    for b in short_budgets:
        e = short_epochs(epochs, float(b))
        if e < epochs:  # a "short" run as long as the reference would be a second reference
            shorts.setdefault(e, Variant(f"short-e{e}", "short", epochs=e))
    out += list(shorts.values())

    if include is None:
        return out
    wanted = set(include)
    known = {v.name for v in out} | set(FAMILIES)
    unknown = sorted(wanted - known)
    if unknown:
        raise InputError(
            f"unknown variant(s) {', '.join(unknown)} (variants: {', '.join(v.name for v in out)}; "
            f"families: {', '.join(FAMILIES)})",
            where="study --variants",
        )
    return [v for v in out if v.family == "reference" or v.name in wanted or v.family in wanted]


def sample_configs(suggest: Callable[[optuna.Trial], dict[str, Any]], n: int, seed: int = 0) -> list[Config]:
    """``n`` configurations drawn with a seeded random sampler; ``suggest(trial)`` maps a trial to overrides."""
    if n < 3:
        raise InputError(f"n_configs must be >= 3 to rank configurations, got {n}", where="study")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for i in range(n):
        trial = study.ask()
        params = suggest(trial)
        study.tell(trial, 0.0)
        configs.append(Config(id=f"c{i:02d}", params={k: _plain(v) for k, v in params.items()}))
    return configs


def _plain(v: Any) -> Any:
    # numpy scalars from a sampler must survive JSON round-trips unchanged for the spec hash.
    return v.item() if hasattr(v, "item") else v
