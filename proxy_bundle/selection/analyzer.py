"""Auto3DSeg data-analyzer hook for proxy-data selection.

Two ways in:

* ``analyze`` (CLI command): runs MONAI's ``DataAnalyzer`` unmodified, as ``AutoRunner`` would
  (``W/datastats.yaml`` and ``W/datastats_by_case.yaml``), then the proxy selection, and merges a ``proxy_data``
  section into ``W/datastats.yaml`` and a ``proxy_data`` entry into every case of ``W/datastats_by_case.yaml``.
  ``AutoRunner(work_dir=W, analyze=False, ...)`` then runs on those files, and an algorithm template reads
  ``proxy_data`` (e.g. ``proxy_data#datalist``, the proxy datalist written next to them). ``W/cache.yaml`` is marked
  "analysis done", so that an ``AutoRunner`` on ``W`` does not re-run ``DataAnalyzer`` and drop the section.
* :class:`ProxySimilarityAnalyzer` / :class:`ProxySimilaritySummary`: the same computation as a case analyzer and
  a summary analyzer for ``SegSummarizer.add_analyzer`` in a custom analysis pipeline. ``DataAnalyzer`` itself
  keeps only its own keys and offers no way to add an analyzer, hence the separate pass above.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.auto3dseg.analyzer import Analyzer

from proxy_bundle.errors import InputError
from proxy_bundle.options import SelectionMode, Similarity, Strategy
from proxy_bundle.selection.preprocess import PreprocessConfig, proxy_features
from proxy_bundle.selection.similarity import METRICS, mean_similarity, pairwise_similarity, quantize
from proxy_bundle.selection.strategies import STRATEGIES, choose, subset_size

__all__ = ["ProxySimilarityAnalyzer", "ProxySimilaritySummary", "merge_proxy_data", "analyze", "SECTION"]

#: Key of the section added to ``datastats.yaml`` and to each case of ``datastats_by_case.yaml``.
SECTION = "proxy_data"
_IMAGE_PATH = "image_filepath"  # DataStatsKeys.BY_CASE_IMAGE_PATH


class ProxySimilarityAnalyzer(Analyzer):
    """Case analyzer: the case's image on the proxy grid (bin codes for MI, intensities for NCC).

    Input: a SegSummarizer data dict (``image`` channel first and RAS as a MetaTensor, ``label`` with or without a
    channel axis). Output: ``data[stats_name] = {"features": ndarray, "mode_used": "roi"|"image", "note": str|None}``.
    The features are what :class:`ProxySimilaritySummary` compares; they are not meant for YAML export.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str | None = "label",
        stats_name: str = SECTION,
        config: PreprocessConfig | None = None,
        metric: str = "mi",
        bins: int = 32,
    ) -> None:
        if metric not in METRICS:
            raise InputError(f"unknown metric {metric!r} (use one of {', '.join(METRICS)})", where="metric")
        self.image_key = image_key
        self.label_key = label_key
        self.config = config if config is not None else PreprocessConfig()
        self.metric = metric
        self.bins = int(bins)
        super().__init__(stats_name, {"features": None, "mode_used": None, "note": None})

    @torch.no_grad()
    def __call__(self, data: Any) -> dict:
        d = dict(data)
        case = {"image": d[self.image_key]}
        if self.label_key is not None and d.get(self.label_key) is not None:
            case["label"] = d[self.label_key]
        feats = proxy_features(case, self.config)
        values = feats.features
        if self.metric in ("mi", "nmi"):
            values = quantize(values, self.bins).numpy()
        report = deepcopy(self.get_report_format())
        report.update(features=values, mode_used=feats.mode_used, note=feats.note)
        d[self.stats_name] = report
        return d


class ProxySimilaritySummary(Analyzer):
    """Summary analyzer: all-pairs similarity of the cases' proxy features, per-case scores and the selection.

    Returns ``{"metric", "strategy", "n_cases", "k", "scores": [...], "selected": [case indices],
    "selected_images": [...], "score_stats": {...}}``.
    """

    def __init__(
        self,
        stats_name: str = SECTION,
        metric: str = "mi",
        strategy: str = "representative",
        fraction: float | None = 0.25,
        count: int | None = None,
        bins: int = 32,
        seed: int = 0,
        device: str | None = None,
    ) -> None:
        if metric not in METRICS:
            raise InputError(f"unknown metric {metric!r} (use one of {', '.join(METRICS)})", where="metric")
        if strategy not in STRATEGIES:
            raise InputError(f"unknown strategy {strategy!r} (use one of {', '.join(STRATEGIES)})", where="strategy")
        self.metric, self.strategy = metric, strategy
        self.fraction, self.count = (None, count) if count is not None else (fraction, None)
        self.bins, self.seed, self.device = int(bins), int(seed), device
        super().__init__(stats_name, {})

    def __call__(self, data: list[dict]) -> dict:
        rows = [d[self.stats_name] for d in data]
        if len(rows) < 2:
            raise InputError("at least two cases are needed to score similarity", where=self.stats_name)
        stack = np.stack([np.asarray(r["features"]).reshape(-1) for r in rows])
        sim = pairwise_similarity(stack, self.metric, self.bins, device=self.device).numpy()
        scores = mean_similarity(sim)
        k = subset_size(len(rows), fraction=self.fraction, count=self.count)
        chosen = [int(c) for c in choose(sim, self.strategy, k, self.seed)]
        images = [str(d.get(_IMAGE_PATH, "")) for d in data]
        return {
            "metric": self.metric,
            "strategy": self.strategy,
            "n_cases": len(rows),
            "k": k,
            "scores": [float(s) for s in scores],
            "selected": chosen,
            "selected_images": [images[c] for c in chosen],
            "score_stats": {"min": float(scores.min()), "max": float(scores.max()), "mean": float(scores.mean()),
                            "std": float(scores.std())},
        }


# ----------------------------------------------------------------------------------------------------------------
# analyze command


def _load_yaml(path: Path) -> Any:
    from monai.bundle import ConfigParser

    try:
        return ConfigParser.load_config_file(str(path))
    except FileNotFoundError:
        raise InputError("file not found", where=str(path)) from None
    except Exception as err:
        raise InputError(f"cannot parse ({type(err).__name__}: {' '.join(str(err).split())[:200]})",
                         where=str(path)) from None


def _source_path(value: Any, key: str, config_path: Path) -> Path:
    """A path from input.yaml: as given (AutoRunner resolves it against the working directory), else next to the
    yaml file."""
    if not isinstance(value, str) or not value:
        raise InputError(f"'{key}' must be a path", where=str(config_path))
    p = Path(os.path.expanduser(value))
    if p.exists() or p.is_absolute():
        return p
    beside = config_path.parent / p
    return beside if beside.exists() else p


def _normpath(p: Any) -> str:
    if isinstance(p, (list, tuple)) and p:  # multi-file (one file per channel) images: the first file names the case
        p = p[0]
    return os.path.normcase(os.path.abspath(os.path.normpath(str(p))))


def _expected_images(datalist: Path, dataroot: Path) -> dict[str, str]:
    """{normalised image path: image as listed} for the training entries DataAnalyzer reads."""
    from proxy_bundle.validation import read_json, resolve

    out = {}
    for e in read_json(datalist).get("training", []):
        image = e["image"][0] if isinstance(e["image"], list) else e["image"]
        out[_normpath(resolve(image, dataroot))] = str(image)
    return out


class _Skipped:
    """Collects DataAnalyzer's "Unable to process data <file>" log lines: it skips such a case and goes on."""

    def __init__(self) -> None:
        import logging

        self.messages: list[str] = []
        self.logger = logging.getLogger("monai.apps.auto3dseg.data_analyzer")
        outer = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                text = record.getMessage()
                if text.startswith("Unable to process data"):
                    outer.messages.append(" ".join(text.split()))

        self.handler = Handler(level=logging.INFO)

    def __enter__(self) -> "_Skipped":
        import logging

        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


def _run_data_analyzer(datalist: Path, dataroot: Path, work_dir: Path, device: str, workers: int) -> Path:
    """MONAI's DataAnalyzer as AutoRunner runs it, written to a new temporary folder in ``work_dir`` (returned).

    The caller moves the files into place only when everything after the analysis succeeded too, so a failed
    or interrupted analysis never leaves a ``datastats.yaml`` that a later run (or AutoRunner) takes for done.

    Raises:
        InputError: DataAnalyzer skipped a case (it logs the error and goes on, which would silently analyse
            fewer cases than AutoRunner trains on).
    """
    from monai.apps.auto3dseg import DataAnalyzer

    expected = _expected_images(datalist, dataroot)
    tmp = Path(tempfile.mkdtemp(prefix=".datastats.", dir=work_dir))
    try:
        with _Skipped() as skipped:
            DataAnalyzer(str(datalist), str(dataroot), output_path=str(tmp / "datastats.yaml"), do_ccp=False,
                         device=device, worker=workers).get_all_case_stats()
        cases = _load_yaml(tmp / "datastats_by_case.yaml").get("stats_by_cases", []) or []
        found = {_normpath(c.get(_IMAGE_PATH)) for c in cases if isinstance(c, dict)}
        missing = [v for k, v in expected.items() if k not in found]
        if missing:
            why = next((m for m in skipped.messages if os.path.basename(missing[0]) in m), None)
            raise InputError(
                f"MONAI's DataAnalyzer could not analyse this case ({len(missing)} of {len(expected)} cases "
                f"skipped{': ' + why[:300] if why else ''})",
                where=missing[0],
            )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _install(tmp: Path, work_dir: Path) -> None:
    """Move a finished analysis into place: by-case first, because datastats.yaml marks a finished analysis."""
    os.replace(tmp / "datastats_by_case.yaml", work_dir / "datastats_by_case.yaml")
    os.replace(tmp / "datastats.yaml", work_dir / "datastats.yaml")


def merge_proxy_data(datastats: str | os.PathLike, by_case: str | os.PathLike, section: dict,
                     per_case: dict[str, dict], fingerprint: str | None = None) -> None:
    """Add ``section`` as ``proxy_data`` to ``datastats`` and ``per_case[image path]`` to the matching cases of
    ``by_case`` (cases not listed get ``{"candidate": False}``); both files are rewritten atomically.
    ``fingerprint`` (the input fingerprint the analysis was made from) is recorded as ``input_fingerprint``."""
    from proxy_bundle.atomic import write_yaml

    ds_path, bc_path = Path(datastats), Path(by_case)
    stats = _load_yaml(ds_path)
    cases_doc = _load_yaml(bc_path)
    if not isinstance(stats, dict) or not isinstance(cases_doc, dict):
        raise InputError("not a DataAnalyzer output (expected a mapping)", where=str(ds_path))
    lookup = {_normpath(k): v for k, v in per_case.items()}
    for case in cases_doc.get("stats_by_cases", []) or []:
        if isinstance(case, dict):
            case[SECTION] = lookup.get(_normpath(case.get(_IMAGE_PATH)), {"candidate": False})
    stats[SECTION] = section
    if fingerprint is not None:
        from proxy_bundle.inputs import FINGERPRINT_KEY

        stats[FINGERPRINT_KEY] = fingerprint
    write_yaml(bc_path, _plain(cases_doc))
    write_yaml(ds_path, _plain(stats))


def stamp_fingerprint(datastats: str | os.PathLike, fingerprint: str) -> None:
    """Record the input ``fingerprint`` in a DataAnalyzer output (atomically), as :func:`merge_proxy_data` does."""
    from proxy_bundle.atomic import write_yaml
    from proxy_bundle.inputs import FINGERPRINT_KEY

    stats = _load_yaml(Path(datastats))
    if not isinstance(stats, dict):
        raise InputError("not a DataAnalyzer output (expected a mapping)", where=str(datastats))
    stats[FINGERPRINT_KEY] = fingerprint
    write_yaml(Path(datastats), _plain(stats))


def _plain(obj: Any) -> Any:
    """YAML-safe values (DataAnalyzer output is already plain; numpy scalars may come from the selection)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _unmark_cache(work_dir: Path) -> None:
    """Clear AutoRunner's "analysis done" mark (``cache.yaml``) while a new analysis is made."""
    from proxy_bundle.atomic import write_yaml

    cache_path = work_dir / "cache.yaml"
    if not cache_path.is_file():
        return
    try:
        loaded = _load_yaml(cache_path)
    except InputError:
        loaded = None
    if isinstance(loaded, dict) and loaded.get("analyze"):
        loaded.update(analyze=False, datastats=None)
        write_yaml(cache_path, loaded)


def _mark_cache(work_dir: Path, datastats: Path) -> None:
    """Tell AutoRunner (``cache.yaml``) that the analysis step is done, keeping its other entries."""
    from proxy_bundle.atomic import write_yaml

    cache_path = work_dir / "cache.yaml"
    cache: dict = {"analyze": False, "datastats": None, "algo_gen": False, "train": False}
    if cache_path.is_file():
        try:
            loaded = _load_yaml(cache_path)
            if isinstance(loaded, dict):
                cache.update(loaded)
        except InputError:
            pass
    cache.update(analyze=True, datastats=str(datastats.resolve()))
    write_yaml(cache_path, cache)


def analyze(
    input: str,
    work_dir: str,
    data_fraction: float | None = None,
    count: int | None = None,
    similarity: Similarity = "mi",
    mode: SelectionMode = "roi",
    strategy: Strategy = "representative",
    grid: int = 48,
    bins: int = 32,
    seed: int = 0,
    fold: int | None = 0,
    spacing: Any = None,
    window: Any = None,
    percentiles: Any = None,
    margin: float = 10.0,
    out: str | None = None,
    device: str | None = None,
    num_workers: int = 0,
    reanalyze: bool = False,
    progress: bool = True,
    report: bool = True,
    select: bool = True,
) -> None:
    """Auto3DSeg data analysis plus proxy-data selection, merged into ``WORK_DIR/datastats.yaml``.

    Checks every case first (the validation gate: nothing is written for bad data), puts the datalist in the
    fold form AutoRunner trains on (``WORK_DIR/datalist.json``: a ``validation`` list becomes fold 0, so the same
    cases are analysed as by AutoRunner), runs MONAI's ``DataAnalyzer`` (unmodified) unless ``WORK_DIR`` already
    holds its output for the same input fingerprint (datalist, files, modality; ``--reanalyze`` forces a new run;
    output made from other inputs is deleted first), then selects a proxy subset exactly like the
    ``select`` command and adds a ``proxy_data`` section to ``datastats.yaml`` (metric, mode, strategy, selected
    case ids, score statistics, ``datalist``: the proxy datalist) and per-case scores to
    ``datastats_by_case.yaml``. ``AutoRunner(work_dir=WORK_DIR, analyze=False, ...)`` runs on the result.

    Args:
        input: AutoRunner data source config (YAML/JSON with ``dataroot``, ``datalist``, ``modality``).
        work_dir: Auto3DSeg work directory (created if missing).
        data_fraction: subset size as a fraction of the candidate cases, in (0, 1]; default 0.25 when ``count`` is
            not given either.
        count: subset size as a number of cases.
        similarity: image similarity metric: ``mi``, ``nmi`` or ``ncc``.
        mode: ``roi`` or ``image``.
        strategy: ``representative``, ``diverse``, ``coverage`` or ``random``.
        grid: proxy grid edge (voxels).
        bins: MI histogram bins.
        seed: seed of the ``random`` strategy.
        fold: validation fold kept intact.
        spacing: common voxel size (mm); default: per-axis median of the candidates.
        window: CT window ``low,high`` (HU).
        percentiles: percentile range for non-CT images.
        margin: context around the label's bounding box in ``roi`` mode (mm).
        out: proxy datalist path (default ``WORK_DIR/proxy_datalist.json``; scores next to it).
        device: ``cpu`` or ``cuda`` (default: CUDA when available) for DataAnalyzer and the similarity.
        num_workers: DataLoader worker processes for reading cases (DataAnalyzer and the selection).
        reanalyze: run DataAnalyzer even when its output is already there.
        progress: show progress bars.
        report: write the selection report (Markdown + figures) into ``<proxy datalist stem>_report/``.
        select: also select the proxy subset (False: the data analysis alone, keyed to the input like a full one,
            e.g. for a search that trains on no proxy data; a later call with True adds the selection).
    """
    from proxy_bundle.atomic import ensure_dir
    from proxy_bundle.inputs import datastats_fingerprint, prepare_source
    from proxy_bundle.selection.subset import brief_list, check_options, run_selection, write_selection
    from proxy_bundle.validation import resolve

    if data_fraction is None and count is None:
        data_fraction = 0.25
    check_options(fraction=data_fraction, count=count, metric=similarity, mode=mode, strategy=strategy, grid=grid,
                  bins=bins, seed=seed, workers=num_workers, spacing=spacing, window=window, percentiles=percentiles)
    cfg_path = Path(input)
    if not cfg_path.is_file():
        raise InputError("input config not found", where=str(cfg_path))
    src = _load_yaml(cfg_path)
    if not isinstance(src, dict):
        raise InputError("input config must be a mapping with dataroot, datalist and modality", where=str(cfg_path))
    missing = [k for k in ("dataroot", "datalist", "modality") if k not in src]
    if missing:
        raise InputError(f"missing key(s) {', '.join(missing)}", where=str(cfg_path))
    datalist = _source_path(src["datalist"], "datalist", cfg_path)
    dataroot = _source_path(src["dataroot"], "dataroot", cfg_path)
    if not dataroot.is_dir():
        raise InputError("dataroot is not a directory", where=str(dataroot))
    if Path(work_dir).exists() and not Path(work_dir).is_dir():
        raise InputError("output directory is an existing file", where=str(work_dir))
    # The gate: nothing is written unless every case passes.
    source = prepare_source({**src, "datalist": str(datalist.resolve()), "dataroot": str(dataroot.resolve())},
                            work_dir, progress=progress)
    work = ensure_dir(work_dir)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")

    datastats, by_case = work / "datastats.yaml", work / "datastats_by_case.yaml"
    tmp: Path | None = None
    if reanalyze or not (by_case.is_file() and datastats_fingerprint(datastats) == source.fingerprint):
        # Whatever stands there was made from other inputs (or never finished): it must not outlive this run.
        for stale in (datastats, by_case):
            stale.unlink(missing_ok=True)
        _unmark_cache(work)
        print(f"running MONAI DataAnalyzer on {source.n_training} training cases")
        tmp = _run_data_analyzer(source.datalist, dataroot, work, dev, int(num_workers))
    else:
        print(f"reusing {datastats} (DataAnalyzer output for the same input)")

    if not select:
        try:
            if tmp is not None:
                stamp_fingerprint(tmp / "datastats.yaml", source.fingerprint)
                _install(tmp, work)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        _mark_cache(work, datastats)
        print(f"wrote {datastats} and {by_case} (no proxy-data selection: not needed here)")
        return

    try:
        selection = run_selection(
            source.datalist, dataroot, fraction=data_fraction, count=count, metric=similarity, mode=mode,
            strategy=strategy,
            grid=grid, bins=bins, seed=seed, fold=fold, modality=src["modality"], spacing=spacing, window=window,
            percentiles=percentiles, margin=margin, device=device, workers=num_workers, progress=progress,
            gate_input=False,
        )
        selection.scores["provenance"]["input_fingerprint"] = source.fingerprint
        out_path, scores_path = write_selection(selection, out if out is not None else work / "proxy_datalist.json")
        doc = selection.scores
        prov, summ = doc["provenance"], doc["summary"]
        section = {
            "metric": prov["metric"],
            "mode": prov["mode"],
            "strategy": prov["strategy"],
            "fraction": prov["fraction"],
            "count": prov["count"],
            "seed": prov["seed"],
            "fold": fold,
            "n_candidates": summ["n_candidates"],
            "n_selected": summ["n_selected"],
            "selected": list(summ["selected"]),
            "score_stats": summ["score_stats"],
            "selected_score_stats": summ["selected_score_stats"],
            "fallback_cases": summ["fallback_cases"],
            "validation": prov["validation"],
            "datalist": str(Path(out_path).resolve()),
            "scores_file": str(Path(scores_path).resolve()),
            "source_datalist": str(datalist.resolve()),
            "source_datalist_sha256": prov["datalist_sha256"],
            "grid": prov["grid"],
            "bins": prov["bins"],
            "spacing": prov["spacing"],
            "modality": prov["modality"],
        }
        per_case = {}
        for row in doc["cases"]:
            image = row["image"][0] if isinstance(row["image"], list) else row["image"]
            per_case[str(resolve(image, dataroot))] = {
                "candidate": True,
                "id": row["id"],
                "score": row["score"],
                "rank": row["rank"],
                "selected": row["selected"],
                "mode_used": row["mode_used"],
            }
        target = tmp if tmp is not None else work
        merge_proxy_data(target / "datastats.yaml", target / "datastats_by_case.yaml", section, per_case,
                         fingerprint=source.fingerprint)
        if tmp is not None:
            _install(tmp, work)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    _mark_cache(work, datastats)
    print(f"selected {summ['n_selected']} of {summ['n_candidates']} candidates ({similarity}, {mode}, {strategy}): "
          f"{brief_list(summ['selected'])}")
    print(f"wrote {datastats} (proxy_data), {by_case}, {out_path} and {scores_path}")
    if report:
        from proxy_bundle.selection.report import report_dir, report_line, write_selection_report

        print(report_line(write_selection_report(doc, report_dir(out_path))))
