"""All-pairs image similarity: histogram mutual information (plain and normalized) and normalized cross-correlation.

Every function takes a stack of equally sized, flattened images ``x[N, V]`` and returns an ``N x N`` float64
matrix. Nothing loops over pairs in Python:

* NCC is one Gram matrix of the standardised rows.
* MI needs a joint intensity histogram per pair. Two batched kernels produce the same integer counts:

  - ``"matmul"``: one-hot encode the bin codes (``[V, n*bins]``) and multiply blocks of cases; entry
    ``(i*bins + a, j*bins + b)`` of the product is the joint count ``n_ab`` of cases ``i`` and ``j``. Tensor cores
    make this the fast path on a GPU (0/1 inputs and float32 accumulation keep the counts exact).
  - ``"bincount"``: encode every voxel of a block of pairs as ``pair*bins^2 + a*bins + b`` and count them with a
    single ``torch.bincount``. The dense product spends ``bins^2`` multiply-adds per voxel and pair where this
    spends one increment, so on a CPU it is about 30x faster (measured, see ``benchmarks/bench_selection.py``).

  ``method="auto"`` takes ``matmul`` on CUDA and ``bincount`` elsewhere.

The ``*_reference`` functions are deliberately plain per-pair loops on numpy (``numpy.histogram2d``,
``numpy.corrcoef``); they are the independent check in the tests and the baseline in the benchmark.
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import numpy as np
import torch

from proxy_bundle.errors import InputError

__all__ = [
    "METRICS",
    "torch_threads",
    "quantize",
    "entropy",
    "pairwise_joint_counts",
    "pairwise_mi",
    "pairwise_ncc",
    "pairwise_similarity",
    "mean_similarity",
    "pairwise_mi_reference",
    "pairwise_ncc_reference",
]

#: Similarity metrics understood by :func:`pairwise_similarity`: MI in nats, MI normalised to [0, 1], NCC in [-1, 1].
METRICS = ("mi", "nmi", "ncc")

# int32 keys for a block of pairs are kept near this many elements (4 MiB): large enough that the per-call overhead
# vanishes, small enough to stay cache friendly.
_BINCOUNT_BLOCK_ELEMENTS = 1 << 20
# one-hot blocks (float32) for the matmul kernel are kept near this many elements (1 GiB).
_MATMUL_BLOCK_ELEMENTS = 1 << 28


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads, restoring the previous setting afterwards.

    Work on one small volume (or a pool of threads that each run single-threaded kernels) gains nothing from
    intra-op parallelism, and on a busy machine the idle OpenMP threads cost more than the work itself (measured:
    100x on a 110k-voxel quantisation with a loaded 2-core CPU).
    """
    previous = torch.get_num_threads()
    if n == previous:
        yield
        return
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_stack(x: torch.Tensor | np.ndarray, name: str = "x") -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise InputError(f"expected a 2-D stack [cases, voxels], got shape {tuple(t.shape)}", where=name)
    if t.shape[1] == 0:
        raise InputError("images have no voxels", where=name)
    return t


def _check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 2 <= int(bins) <= 256:
        raise InputError(f"bins must be an integer in [2, 256], got {bins!r}", where="bins")
    return int(bins)


def quantize(
    x: torch.Tensor | np.ndarray, bins: int = 32, value_range: Sequence[float] | None = (0.0, 1.0)
) -> torch.Tensor:
    """Map intensities to histogram bin codes ``0 .. bins-1`` (uint8), with the same bin edges for every image.

    Args:
        x: intensities, any shape.
        bins: number of equal-width bins.
        value_range: ``(low, high)`` of the bins; values outside are clipped into the first/last bin. ``None`` uses
            the minimum and maximum of ``x`` (all images together, so the codes stay comparable).

    Returns:
        uint8 tensor of the same shape as ``x``. An integer ``x`` is returned unchanged (as uint8) when it already
        holds codes in ``[0, bins)``.
    """
    bins = _check_bins(bins)
    t = torch.as_tensor(x)
    if not torch.is_floating_point(t):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= bins):
            raise InputError(f"integer codes must lie in [0, {bins}), got [{int(t.min())}, {int(t.max())}]", where="x")
        return t.to(torch.uint8)
    if value_range is None:
        lo, hi = (float(t.min()), float(t.max())) if t.numel() else (0.0, 1.0)
    else:
        lo, hi = float(value_range[0]), float(value_range[1])
    if not math.isfinite(lo) or not math.isfinite(hi):
        raise InputError("intensities contain NaN or infinity", where="x")
    if hi <= lo:
        return torch.zeros(t.shape, dtype=torch.uint8, device=t.device)
    if torch.isnan(t).any():
        raise InputError("intensities contain NaN", where="x")
    flat = t.reshape(-1)
    codes = torch.empty(flat.shape, dtype=torch.uint8, device=t.device)
    scale = bins / (hi - lo)
    # chunks bound the float64 temporaries for large stacks (1,000 cases at 48^3 are 10^8 voxels).
    for start in range(0, flat.numel(), 1 << 24):
        part = flat[start : start + (1 << 24)].to(torch.float64)
        codes[start : start + part.numel()] = torch.floor((part - lo) * scale).clamp_(0, bins - 1).to(torch.uint8)
    return codes.view(t.shape)


def _entropy_from_counts(counts: torch.Tensor, total: int) -> torch.Tensor:
    """Shannon entropy in nats of histograms along the last axis, each summing to ``total``."""
    c = counts.to(torch.float64)
    return math.log(total) - torch.special.xlogy(c, c).sum(-1) / total


def entropy(codes: torch.Tensor | np.ndarray, bins: int = 32) -> torch.Tensor:
    """Entropy (nats) of each row of a stack of bin codes ``[N, V]``."""
    bins = _check_bins(bins)
    return _entropy_of_codes(quantize(_check_stack(codes, "codes"), bins), bins)


def _entropy_of_codes(codes: torch.Tensor, bins: int) -> torch.Tensor:
    n, v = codes.shape
    out = torch.empty(n, dtype=torch.float64, device=codes.device)
    for i in range(n):  # one bincount per image: no int64 copy of the whole stack
        out[i] = _entropy_from_counts(torch.bincount(codes[i].to(torch.int64), minlength=bins), v)
    return out


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was requested but is not available", where="device")
    return dev


def _joint_entropy_bincount(codes: torch.Tensor, bins: int, threads: int, progress) -> torch.Tensor:
    n, v = codes.shape
    b2 = bins * bins
    # square blocks of s x s pairs; keys (< s*s*bins^2) stay far below 2**31.
    s = max(1, min(n, math.isqrt(max(1, _BINCOUNT_BLOCK_ELEMENTS // v))))
    c32 = codes.to(torch.int32)
    local = torch.arange(s, dtype=torch.int32).unsqueeze(1)
    # sum_ab n_ab*log(n_ab) by table lookup: cheaper than xlogy on every bin of every pair.
    nlogn = torch.special.xlogy(*(torch.arange(v + 1, dtype=torch.float64),) * 2)
    log_v = math.log(v)
    joint = torch.zeros(n, n, dtype=torch.float64)

    def row_block(i0: int) -> None:
        i1 = min(n, i0 + s)
        r = i1 - i0
        # key of pair (a, b) = (a*m + b) * bins^2 + code_a * bins + code_b: a single broadcast add per block.
        row_codes = c32[i0:i1] * bins
        row_key = row_codes + local[:r] * (s * b2)
        buf = torch.empty(r * s * v, dtype=torch.int32)
        done = 0
        for j0 in range(i0, n, s):
            j1 = min(n, j0 + s)
            m = j1 - j0
            if m != s:
                row_key = row_codes + local[:r] * (m * b2)
            col_key = c32[j0:j1] + local[:m] * b2
            key = torch.add(row_key.unsqueeze(1), col_key.unsqueeze(0), out=buf[: r * m * v].view(r, m, v))
            counts = torch.bincount(key.view(-1), minlength=r * m * b2).view(r, m, b2)
            joint[i0:i1, j0:j1] = log_v - nlogn[counts].sum(2) / v
            done += r * m if j0 != i0 else r * (r - 1) // 2
        if progress is not None:
            progress(done)

    starts = range(0, n, s)
    # parallelism comes from the row blocks (torch releases the GIL inside add/bincount), not from intra-op threads.
    with torch_threads(1):
        if threads > 1 and len(starts) > 1:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(row_block, starts))
        else:
            for i0 in starts:
                row_block(i0)
    # blocks cover the upper triangle; diagonal blocks are complete, so take the upper half and mirror it.
    upper = torch.triu(joint, diagonal=1)
    return upper + upper.T


def _joint_entropy_matmul(codes: torch.Tensor, bins: int, device: torch.device, progress) -> torch.Tensor:
    n, v = codes.shape
    # cases per block so that one one-hot block [V, block*bins] stays within the budget.
    block = max(1, min(n, _MATMUL_BLOCK_ELEMENTS // (v * bins)))
    joint = torch.zeros(n, n, dtype=torch.float64, device=device)
    codes = codes.to(device=device, dtype=torch.int64)

    def one_hot(lo: int, hi: int) -> torch.Tensor:
        # [V, cases*bins]; float32 keeps integer counts exact up to 2**24 voxels, also under TF32 (0/1 inputs).
        # Scattered straight into float32: F.one_hot would first build an int64 tensor twice the size.
        oh = torch.zeros(v, hi - lo, bins, dtype=torch.float32, device=device)
        oh.scatter_(2, codes[lo:hi].T.unsqueeze(-1), 1.0)
        return oh.view(v, (hi - lo) * bins)

    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        oi = one_hot(i0, i1)
        for j0 in range(i0, n, block):
            j1 = min(n, j0 + block)
            oj = oi if j0 == i0 else one_hot(j0, j1)
            counts = (oi.T @ oj).view(i1 - i0, bins, j1 - j0, bins).permute(0, 2, 1, 3)
            h = _entropy_from_counts(counts.reshape(i1 - i0, j1 - j0, bins * bins).round(), v)
            joint[i0:i1, j0:j1] = h
            joint[j0:j1, i0:i1] = h.T
            if progress is not None:
                pairs = (i1 - i0) * (j1 - j0) if j0 != i0 else (i1 - i0) * (i1 - i0 - 1) // 2
                progress(pairs)
    return joint.cpu()


def pairwise_joint_counts(codes: torch.Tensor | np.ndarray, bins: int = 32) -> torch.Tensor:
    """Joint histograms ``[N, N, bins, bins]`` of all pairs of code rows (one-hot product; for small inputs/tests)."""
    bins = _check_bins(bins)
    c = quantize(_check_stack(codes, "codes"), bins).to(torch.int64)
    n, v = c.shape
    oh = torch.nn.functional.one_hot(c.T, bins).reshape(v, n * bins).to(torch.float64)
    return (oh.T @ oh).view(n, bins, n, bins).permute(0, 2, 1, 3).round().to(torch.int64)


def pairwise_mi(
    x: torch.Tensor | np.ndarray,
    bins: int = 32,
    normalized: bool = False,
    value_range: Sequence[float] | None = (0.0, 1.0),
    device: str | torch.device | None = None,
    method: str = "auto",
    threads: int | None = None,
    progress=None,
) -> torch.Tensor:
    """Histogram mutual information between all pairs of rows of ``x[N, V]``.

    Args:
        x: float intensities (binned with :func:`quantize` over ``value_range``) or integer bin codes in ``[0, bins)``.
        bins: histogram bins per image.
        normalized: return ``2 * I(X;Y) / (H(X) + H(Y))`` in ``[0, 1]`` (0 when both images are constant) instead
            of ``I(X;Y)`` in nats.
        value_range: intensity range of the bins for float input (``None``: global min/max).
        device: where to compute (default: CUDA when available).
        method: ``"auto"``, ``"bincount"`` or ``"matmul"`` (see the module docstring); all give identical counts.
        threads: CPU worker threads for ``bincount`` (default ``torch.get_num_threads()``).
        progress: optional callable receiving the number of pairs finished since its last call.

    Returns:
        float64 ``[N, N]`` on the CPU; the diagonal holds each image's entropy (``normalized``: 1, or 0 for a
        constant image).
    """
    bins = _check_bins(bins)
    if method not in ("auto", "bincount", "matmul"):
        raise InputError(f"unknown MI method {method!r} (use auto, bincount or matmul)", where="method")
    dev = _resolve_device(device)
    workers = torch.get_num_threads() if threads is None else max(1, int(threads))
    if method == "auto":
        method = "matmul" if dev.type == "cuda" else "bincount"
    # On the CPU the parallelism is the kernel's own thread pool; torch's intra-op threads only add overhead to
    # the per-image bincounts and quantisation (see torch_threads).
    with torch_threads(1 if dev.type == "cpu" and method == "bincount" else torch.get_num_threads()):
        codes = quantize(_check_stack(x).to(dev), bins, value_range)
        h = _entropy_of_codes(codes, bins).cpu()
        if method == "bincount":
            if dev.type == "cpu":
                joint = _joint_entropy_bincount(codes.cpu(), bins, workers, progress)
            else:
                joint = _joint_entropy_bincount_device(codes, bins, progress)
        else:
            joint = _joint_entropy_matmul(codes, bins, dev, progress)
    mi = (h.unsqueeze(0) + h.unsqueeze(1) - joint).clamp_(min=0.0)
    mi.fill_diagonal_(0.0)
    mi += torch.diag(h)
    if not normalized:
        return mi
    denom = h.unsqueeze(0) + h.unsqueeze(1)
    nmi = torch.where(denom > 0, 2.0 * mi / denom.clamp(min=1e-300), torch.zeros_like(mi))
    return nmi.clamp_(0.0, 1.0)


def _joint_entropy_bincount_device(codes: torch.Tensor, bins: int, progress) -> torch.Tensor:
    """The bincount kernel on an accelerator: no thread pool, int64 keys (what CUDA bincount expects)."""
    n, v = codes.shape
    b2 = bins * bins
    max_pairs = max(1, _BINCOUNT_BLOCK_ELEMENTS // v)
    c64 = codes.to(torch.int64)
    joint = torch.zeros(n, n, dtype=torch.float64, device=codes.device)
    for i in range(n - 1):
        for j0 in range(i + 1, n, max_pairs):
            j1 = min(n, j0 + max_pairs)
            m = j1 - j0
            key = c64[j0:j1] + (c64[i] * bins).unsqueeze(0)
            key += (torch.arange(m, device=codes.device) * b2).unsqueeze(1)
            counts = torch.bincount(key.view(-1), minlength=m * b2).view(m, b2)
            joint[i, j0:j1] = _entropy_from_counts(counts, v)
        if progress is not None:
            progress(n - 1 - i)
    joint = joint + joint.T
    return joint.cpu()


def pairwise_ncc(
    x: torch.Tensor | np.ndarray, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Normalized cross-correlation (Pearson correlation of voxel intensities) for all pairs of rows of ``x[N, V]``.

    One Gram matrix of the rows after subtracting each row's mean and dividing by its norm. A constant image has
    NCC 0 with every image (and 1 with itself). Returns float64 ``[N, N]`` on the CPU, values in ``[-1, 1]``.
    """
    dev = _resolve_device(device)
    t = _check_stack(x).to(device=dev)
    if not torch.is_floating_point(t):
        t = t.to(torch.float32)
    if torch.isnan(t).any():
        raise InputError("intensities contain NaN", where="x")
    # row means are accumulated in float64 so that near-constant images are centred correctly.
    z = t.to(dtype) - t.mean(dim=1, keepdim=True, dtype=torch.float64).to(dtype)
    norm = torch.linalg.vector_norm(z, dim=1, dtype=torch.float64)
    scale = t.abs().amax(dim=1).to(torch.float64) * math.sqrt(t.shape[1])
    constant = norm <= 1e-7 * scale
    z = z / torch.where(constant, torch.ones_like(norm), norm).to(dtype).unsqueeze(1)
    z[constant] = 0
    ncc = (z @ z.T).to(torch.float64).clamp_(-1.0, 1.0)
    ncc.fill_diagonal_(1.0)
    return ncc.cpu()


def pairwise_similarity(
    x: torch.Tensor | np.ndarray,
    metric: str = "mi",
    bins: int = 32,
    value_range: Sequence[float] | None = (0.0, 1.0),
    device: str | torch.device | None = None,
    progress=None,
) -> torch.Tensor:
    """Dispatch to :func:`pairwise_mi` (``"mi"``, ``"nmi"``) or :func:`pairwise_ncc` (``"ncc"``)."""
    if metric == "mi":
        return pairwise_mi(x, bins, False, value_range, device, progress=progress)
    if metric == "nmi":
        return pairwise_mi(x, bins, True, value_range, device, progress=progress)
    if metric == "ncc":
        sim = pairwise_ncc(x, device)
        if progress is not None:
            n = sim.shape[0]
            progress(n * (n - 1) // 2)
        return sim
    raise InputError(f"unknown metric {metric!r} (use one of {', '.join(METRICS)})", where="metric")


def mean_similarity(sim: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-case score: mean similarity to the other cases (the diagonal is left out)."""
    s = np.asarray(sim, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise InputError(f"similarity matrix must be square, got shape {s.shape}", where="similarity")
    n = s.shape[0]
    if n < 2:
        raise InputError("at least two cases are needed to score similarity", where="similarity")
    return (s.sum(axis=1) - np.diag(s)) / (n - 1)


# ----------------------------------------------------------------------------------------------------------------
# Per-pair references (independent implementations: numpy only, one pair at a time).


def _mi_from_hist(h: np.ndarray) -> tuple[float, float, float]:
    p = h / h.sum()
    px, py = p.sum(axis=1), p.sum(axis=0)

    def ent(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    hx, hy, hxy = ent(px), ent(py), ent(p.ravel())
    return hx + hy - hxy, hx, hy


def pairwise_mi_reference(
    x: np.ndarray, bins: int = 32, normalized: bool = False, value_range: Sequence[float] | None = (0.0, 1.0)
) -> np.ndarray:
    """Straightforward per-pair loop with ``numpy.histogram2d`` (same bin edges as :func:`quantize`)."""
    a = np.asarray(x)
    if np.issubdtype(a.dtype, np.integer):
        edges = np.arange(bins + 1, dtype=np.float64) - 0.5
        a = a.astype(np.float64)
    else:
        lo, hi = (a.min(), a.max()) if value_range is None else value_range
        a = np.clip(a.astype(np.float64), lo, hi)
        edges = np.linspace(lo, hi, bins + 1)
    n = a.shape[0]
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            h, _, _ = np.histogram2d(a[i], a[j], bins=[edges, edges])
            mi, hx, hy = _mi_from_hist(h)
            if normalized:
                mi = 2 * mi / (hx + hy) if hx + hy > 0 else 0.0
            out[i, j] = out[j, i] = max(mi, 0.0)
    return out


def pairwise_ncc_reference(x: np.ndarray) -> np.ndarray:
    """Per-pair loop with ``numpy.corrcoef``."""
    a = np.asarray(x, dtype=np.float64)
    n = a.shape[0]
    out = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            if a[i].std() == 0 or a[j].std() == 0:
                continue
            out[i, j] = out[j, i] = np.corrcoef(a[i], a[j])[0, 1]
    return out
