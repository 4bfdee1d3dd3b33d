"""What a study trains: K sampled configurations x a list of fidelity variants.

Variants (``family``):

* ``reference``: full network, full training data, ``epochs`` epochs. Every other variant is compared with it.
* ``network``: the proxy network (width multiplier ``width``), full data.
* ``data``: full network, a proxy subset (``fraction`` of the training cases) for every selection metric x
  strategy.
* ``random``: full network, a random subset of the same size, one variant per seed (the spread a
  similarity-selected subset has to beat).
* ``both``: proxy network and one proxy subset (``both_data`` = ``metric-strategy``).
* ``short``: full network and full data for ``max(1, round(epochs * fraction))`` epochs: the same number of
  training iterations as a proxy-data run, the equal-cost baseline a proxy has to beat.
* ``repeat`` (only on request): the reference again with another training seed. Its agreement with the
  reference is the noise ceiling: no proxy can be expected to rank configurations better than a second run
  of the reference itself.

Configurations are sampled with Optuna's seeded ``RandomSampler`` from the search space, so the same
seed always gives the same K configurations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import optuna

from proxy_bundle.errors import InputError

METRICS: tuple[str, ...] = ("mi", "ncc")  # the default selection metrics
KNOWN_METRICS: tuple[str, ...] = ("mi", "nmi", "ncc")
STRATEGIES: tuple[str, ...] = ("representative", "diverse", "coverage")
FAMILIES: tuple[str, ...] = ("reference", "network", "data", "random", "both", "short", "repeat")
DEFAULT_FAMILIES: tuple[str, ...] = ("reference", "network", "data", "random", "both", "short")
REPEAT_SEED_OFFSET = 1000  # training seed of the repeat variant = template seed + this


@dataclass(frozen=True)
class Variant:
    """One fidelity at which every configuration is trained."""

    name: str
    family: str
    proxy_network: bool = False
    metric: str | None = None  # selection metric of the proxy subset (None: full data)
    strategy: str | None = None  # selection strategy (``random`` for the random subsets)
    seed: int = 0  # selection seed (only matters for ``random``)
    epochs: int = 1
    train_seed: int | None = None  # training seed override (None: the template's)

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


def short_epochs(epochs: int, fraction: float) -> int:
    """Epochs of the equal-cost short-training baseline: as many iterations as a ``fraction`` subset run."""
    return max(1, int(round(epochs * fraction)))


def build_variants(
    epochs: int,
    fraction: float,
    metrics: Sequence[str] = METRICS,
    strategies: Sequence[str] = STRATEGIES,
    random_seeds: Sequence[int] = (0, 1, 2),
    both_data: str = "mi-representative",
    include: Iterable[str] | None = None,
) -> list[Variant]:
    """The study's variants in training order (reference first).

    ``include`` selects variants by name or family (default: every family but ``repeat``); the reference is
    always kept because every number is relative to it.
    """
    if epochs < 1:
        raise InputError(f"epochs must be >= 1, got {epochs}", where="study")
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction}", where="study")
    for m in metrics:
        if m not in KNOWN_METRICS:
            raise InputError(f"unknown selection metric {m!r} (choose from {', '.join(KNOWN_METRICS)})",
                             where="study")
    for s in strategies:
        if s not in STRATEGIES:
            raise InputError(f"unknown selection strategy {s!r} (choose from {', '.join(STRATEGIES)})", where="study")
    try:
        both_metric, both_strategy = both_data.split("-", 1)
    except ValueError:
        both_metric, both_strategy = "", ""
    if both_metric not in KNOWN_METRICS or both_strategy not in STRATEGIES + ("random",):
        raise InputError(f"both_data must be '<metric>-<strategy>', got {both_data!r}", where="study")

    out = [Variant("reference", "reference", epochs=epochs), Variant("network", "network", proxy_network=True, epochs=epochs)]
    out += [
        Variant(f"data-{m}-{s}", "data", metric=m, strategy=s, epochs=epochs) for m in metrics for s in strategies
    ]
    out += [Variant(f"random-s{seed}", "random", strategy="random", seed=int(seed), epochs=epochs) for seed in random_seeds]
    out.append(Variant("both", "both", proxy_network=True, metric=both_metric, strategy=both_strategy, epochs=epochs))
    out.append(Variant("short", "short", epochs=short_epochs(epochs, fraction)))
    out.append(Variant("repeat", "repeat", epochs=epochs, train_seed=12345 + REPEAT_SEED_OFFSET))

    if include is None:
        return [v for v in out if v.family in DEFAULT_FAMILIES]
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
