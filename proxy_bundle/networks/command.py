"""``python -m proxy_bundle scale``: tabulate the measured cost of candidate proxy networks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from proxy_bundle.errors import InputError
from proxy_bundle.options import CostMetric, Network

if TYPE_CHECKING:
    from proxy_bundle.networks.cost import CostReport

__all__ = ["NETWORK_NAMES", "scale", "format_table"]

# Kept here, not imported from scaling, so that a mistyped name is reported before torch and MONAI load.
NETWORK_NAMES = ("segresnet", "segresnetds", "unet", "dynunet", "swinunetr")
# The proxyseg template's full network (configs/hyper_parameters.yaml: network.init_filters), so that a bare
# `scale` tabulates the network a search trains.
TEMPLATE_INIT_FILTERS = 32


def _numbers(value: Any, where: str) -> list[float]:
    """fire hands "1,0.5" over as a tuple, "1" as a number and "x" as a string: accept all of them."""
    items = value if isinstance(value, (list, tuple)) else str(value).replace(" ", ",").split(",")
    try:
        return [float(v) for v in items if str(v).strip() != ""]
    except (TypeError, ValueError):
        raise InputError(f"expected comma-separated numbers, got {value!r}", where=where) from None


def _levels(value: Any, full: int) -> list[int | None] | None:
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else str(value).replace(" ", ",").split(",")
    out: list[int | None] = []
    for v in items:
        text = str(v).strip().lower()
        if text in ("", "none", "full"):
            out.append(None)
            continue
        try:
            level = int(text)
        except ValueError:
            raise InputError(f"expected integers or 'full', got {value!r}", where="--levels") from None
        out.append(None if level == full else level)
    return out


def _spatial_dims(roi: Any) -> int:
    """A 2-number ROI means a 2D network; a single number means a cube in 3D."""
    if isinstance(roi, (list, tuple)):
        count = len(roi)
    elif isinstance(roi, str):
        count = len([p for p in roi.replace("x", ",").replace(" ", ",").split(",") if p])
    else:
        count = 1
    return 2 if count == 2 else 3


def _ratio(value: float, full: float) -> str:
    return f"{value / full:.3f}" if full else "-"


def format_table(reports: Sequence[CostReport], full: CostReport, pick: CostReport | None, budget: float,
                 metric: str) -> str:
    """Fixed-width text table; the pick is marked ``<= pick`` and duplicates of an earlier row ``= row N``."""
    header = ("#", "width", "blocks", "levels", "params", "x full", "GFLOPs f+b", "x full", "act. MB", "x full",
              "")
    rows = []
    first_row: dict[str, int] = {}
    for i, r in enumerate(reports, 1):
        key = repr(sorted(r.kwargs.items()))
        note = ""
        if key in first_row:
            note = f"= row {first_row[key]} (channels/blocks at their minimum)"
        else:
            first_row[key] = i
        within = getattr(r, metric) <= budget * getattr(full, metric)
        if pick is not None and r is pick:
            note = f"<= pick (largest within {budget:g} x full {metric})"
        elif not within and not note:
            note = "over budget"
        rows.append((
            str(i), f"{r.spec.width:g}", f"{r.spec.blocks:g}",
            "full" if r.spec.levels is None else str(r.spec.levels),
            f"{r.params:,}", _ratio(r.params, full.params),
            f"{r.gflops:.2f}", _ratio(r.flops, full.flops),
            f"{r.activation_mb:.1f}", _ratio(r.activation_bytes, full.activation_bytes),
            note,
        ))
    widths = [max(len(h), *(len(row[j]) for row in rows)) for j, h in enumerate(header)]
    left = {0, 10}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if j in left else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths])]
    lines += [fmt(row) for row in rows]
    return "\n".join(lines)


def scale(
    network: Network = "segresnetds",
    roi: Any = "96,96,96",
    in_channels: int = 1,
    out_channels: int = 2,
    widths: Any = "1,0.5,0.25,0.125",
    blocks: Any = "1,0.5",
    levels: Any = None,
    budget: float = 0.125,
    init_filters: int | None = None,
    cost: CostMetric = "flops",
    feature_size: int | None = None,
) -> None:
    """Print the measured cost of candidate proxy networks at an ROI and mark the largest within a budget.

    Costs are for one float32 training step at batch size 1 (forward + backward), measured on PyTorch's meta
    device: parameters, FLOPs counted by torch.utils.flop_counter, and bytes saved for backward.

    Args:
        network: segresnetds (the proxyseg template's network, and Auto3DSeg's segresnet/segresnet2d templates'),
            segresnet, unet, dynunet or swinunetr (Auto3DSeg's swinunetr template); MONAI's constructor defaults
            otherwise.
        roi: patch size, e.g. 96,96,96 (two numbers for a 2D network).
        in_channels: input channels of the network.
        out_channels: output channels (classes incl. background).
        widths: channel multipliers to try, comma-separated.
        blocks: multipliers on residual blocks per level to try (ignored by dynunet, which has none).
        levels: resolution levels to try, comma-separated ("full" = all); default: full and one fewer.
        budget: fraction of the full network's cost a proxy may use (default 1/8).
        init_filters: init_filters of the full segresnet/segresnetds (default: 32, the proxyseg template's).
        cost: the cost the budget applies to: flops or params.
        feature_size: feature_size of the full swinunetr (Auto3DSeg's template: 48; a multiple of 12).
    """
    name = str(network).lower()
    if name not in NETWORK_NAMES:
        raise InputError(f"unknown network {network!r}; choose from {', '.join(NETWORK_NAMES)}", where="--network")
    if cost not in ("flops", "params"):
        raise InputError(f"must be 'flops' or 'params', got {cost!r}", where="--cost")
    metric = cost
    from proxy_bundle.networks.cost import default_candidates, evaluate_candidates, measure_cost, parse_roi
    from proxy_bundle.networks.scaling import MIN_CHANNELS, NETWORKS, full_kwargs, num_levels, supports_blocks

    spatial_dims = _spatial_dims(roi)
    roi_t = parse_roi(roi, spatial_dims)
    base: dict[str, Any] = {"spatial_dims": spatial_dims, "in_channels": int(in_channels),
                            "out_channels": int(out_channels)}
    if init_filters is None and name in ("segresnet", "segresnetds"):
        init_filters = TEMPLATE_INIT_FILTERS
    if init_filters is not None:
        if name not in ("segresnet", "segresnetds"):
            raise InputError(f"applies to segresnet/segresnetds only, not {name}", where="--init_filters")
        base["init_filters"] = int(init_filters)
    if feature_size is not None:
        if name != "swinunetr":
            raise InputError(f"applies to swinunetr only, not {name}", where="--feature_size")
        if isinstance(feature_size, bool) or not isinstance(feature_size, int) or feature_size <= 0 \
                or feature_size % 12:
            raise InputError(f"must be a positive multiple of 12, got {feature_size!r}", where="--feature_size")
        base["feature_size"] = int(feature_size)
    if not isinstance(budget, (int, float)) or budget <= 0:
        raise InputError(f"must be a positive fraction, got {budget!r}", where="--budget")

    level_list = _levels(levels, num_levels(name, base))
    specs = default_candidates(name, base, widths=_numbers(widths, "--widths"), blocks=_numbers(blocks, "--blocks"),
                               levels=level_list)

    full = measure_cost(name, base, roi_t)
    reports = evaluate_candidates(name, base, roi_t, specs, full=full)
    fitting = [r for r in reports if getattr(r, metric) <= budget * getattr(full, metric)]
    pick = max(fitting, key=lambda r: (r.flops, r.params, r.activation_bytes)) if fitting else None

    kw = full_kwargs(name, base)
    shape = {k: kw[k] for k in ("init_filters", "blocks_down", "blocks_up", "channels", "strides", "num_res_units",
                                "filters", "feature_size", "depths") if k in kw}
    print(f"{NETWORKS[name].cls.__name__} {shape}, ROI {'x'.join(map(str, roi_t))}, batch 1, float32")
    print(f"full network: {full.params:,} parameters, {full.gflops:.2f} GFLOPs forward+backward "
          f"({full.flops_forward / 1e9:.2f} forward), {full.activation_mb:.1f} MB saved for backward")
    if not supports_blocks(name):
        print(f"{name} has no per-level block count: only blocks=1 is tried")
    print()
    print(format_table(reports, full, pick, budget, metric))
    print()
    if pick is None:
        cheapest = min(reports, key=lambda r: getattr(r, metric))
        print(f"no candidate within {budget:g} x full {metric}; the cheapest ({cheapest.spec.label()}) needs "
              f"{getattr(cheapest, metric) / getattr(full, metric):.3f}; try smaller widths or blocks or a larger budget "
              f"(channels never go below {MIN_CHANNELS}, so a narrow full network may not shrink further)")
    else:
        print(f"pick: ProxySpec(width={pick.spec.width:g}, blocks={pick.spec.blocks:g}, levels={pick.spec.levels}) "
              f"-> {pick.flops / full.flops:.3f} x full FLOPs, {pick.params / full.params:.3f} x parameters, "
              f"{pick.activation_bytes / full.activation_bytes:.3f} x activation memory")
