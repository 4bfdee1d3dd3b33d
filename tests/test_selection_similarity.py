"""All-pairs MI / NMI / NCC against independent references, on small arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from proxy_bundle.errors import InputError
from proxy_bundle.selection.similarity import (
    entropy,
    mean_similarity,
    pairwise_joint_counts,
    pairwise_mi,
    pairwise_mi_reference,
    pairwise_ncc,
    pairwise_ncc_reference,
    pairwise_similarity,
    quantize,
)


def _entropy_np(codes: np.ndarray) -> float:
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def _mi_histogram2d(a: np.ndarray, b: np.ndarray, bins: int, lo: float, hi: float) -> float:
    """MI straight from numpy.histogram2d, written out independently of the module's reference."""
    h, _, _ = np.histogram2d(np.clip(a, lo, hi), np.clip(b, lo, hi), bins=bins, range=[[lo, hi], [lo, hi]])
    pxy = h / h.sum()
    px = pxy.sum(axis=1, keepdims=True)
    py = pxy.sum(axis=0, keepdims=True)
    nz = pxy > 0
    return float((pxy[nz] * np.log(pxy[nz] / (px @ py)[nz])).sum())


@pytest.fixture
def stack() -> np.ndarray:
    rng = np.random.default_rng(3)
    base = rng.random(3000)
    rows = [base, base**2, np.clip(base + 0.1 * rng.standard_normal(3000), 0, 1), rng.random(3000),
            np.full(3000, 0.4), 1 - base, rng.beta(2, 5, 3000)]
    return np.stack(rows).astype(np.float32)


def test_mi_of_image_with_itself_is_its_entropy():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 12, size=5000)
    mi = pairwise_mi(np.stack([codes, codes]), bins=16)
    h = _entropy_np(codes)
    assert mi[0, 1].item() == pytest.approx(h, abs=1e-12)
    assert mi[0, 0].item() == pytest.approx(h, abs=1e-12)
    assert entropy(codes[None], bins=16)[0].item() == pytest.approx(h, abs=1e-12)


def test_mi_invariant_to_monotone_relabeling():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 16, size=4000)
    y = np.clip(x + rng.integers(-3, 4, size=4000), 0, 15)
    relabel = np.sort(rng.choice(64, size=16, replace=False))  # strictly increasing map 0..15 -> 0..63
    base = pairwise_mi(np.stack([x, y]), bins=64)[0, 1].item()
    assert base > 0.3
    assert pairwise_mi(np.stack([relabel[x], y]), bins=64)[0, 1].item() == pytest.approx(base, abs=1e-12)
    assert pairwise_mi(np.stack([relabel[x], relabel[y]]), bins=64)[0, 1].item() == pytest.approx(base, abs=1e-12)
    # float intensities: 8 levels at bin centres, squared, still fall into 8 distinct bins of 32 -> same MI.
    levels = (x // 2 + 0.5) / 8
    other = (y // 2 + 0.5) / 8
    f = pairwise_mi(np.stack([levels, other]), bins=32)[0, 1].item()
    assert pairwise_mi(np.stack([levels**2, other]), bins=32)[0, 1].item() == pytest.approx(f, abs=1e-12)


def test_ncc_of_affine_intensity_transform_is_one():
    rng = np.random.default_rng(2)
    x = rng.normal(size=5000)
    ncc = pairwise_ncc(np.stack([x, 3.5 * x + 100.0, -0.2 * x + 4.0]))
    assert ncc[0, 1].item() == pytest.approx(1.0, abs=1e-6)
    assert ncc[0, 2].item() == pytest.approx(-1.0, abs=1e-6)


@pytest.mark.parametrize("method", ["bincount", "matmul"])
@pytest.mark.parametrize("normalized", [False, True])
def test_batched_mi_equals_per_pair_reference(stack, method, normalized):
    ref = pairwise_mi_reference(stack, bins=20, normalized=normalized)
    for threads in (1, 2):
        got = pairwise_mi(stack, bins=20, normalized=normalized, method=method, threads=threads).numpy()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10)


def test_batched_ncc_equals_per_pair_reference(stack):
    np.testing.assert_allclose(pairwise_ncc(stack).numpy(), pairwise_ncc_reference(stack), rtol=0, atol=1e-5)


def test_block_boundaries_do_not_change_results(monkeypatch, stack):
    from proxy_bundle.selection import similarity

    ref = pairwise_mi(stack, bins=8).numpy()
    # tiny blocks: 1-pair bincount blocks and 2-case one-hot blocks exercise every edge case of the tiling
    monkeypatch.setattr(similarity, "_BINCOUNT_BLOCK_ELEMENTS", 1)
    monkeypatch.setattr(similarity, "_MATMUL_BLOCK_ELEMENTS", 2 * 3000 * 8)
    np.testing.assert_array_equal(pairwise_mi(stack, bins=8, method="bincount").numpy(), ref)
    np.testing.assert_allclose(pairwise_mi(stack, bins=8, method="matmul").numpy(), ref, atol=1e-12)


def test_histogram_mi_agrees_with_numpy_histogram2d(stack):
    mi = pairwise_mi(stack, bins=24).numpy()
    for i, j in [(0, 1), (0, 2), (3, 6), (1, 5)]:
        assert mi[i, j] == pytest.approx(_mi_histogram2d(stack[i], stack[j], 24, 0.0, 1.0), abs=1e-10)


def test_joint_counts_are_the_histograms():
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 5, size=(3, 400))
    counts = pairwise_joint_counts(codes, bins=5).numpy()
    for i in range(3):
        for j in range(3):
            h, _, _ = np.histogram2d(codes[i], codes[j], bins=[np.arange(6) - 0.5] * 2)
            np.testing.assert_array_equal(counts[i, j], h)


def test_nmi_range_and_constant_image(stack):
    nmi = pairwise_mi(stack, bins=16, normalized=True).numpy()
    assert (nmi >= 0).all() and (nmi <= 1).all()
    assert nmi[0, 0] == 1.0
    assert nmi[4, 4] == 0.0  # the constant image shares no information
    np.testing.assert_allclose(nmi[4], 0.0, atol=1e-12)
    assert pairwise_ncc(stack).numpy()[4, 0] == 0.0


def test_quantize_edges_and_errors():
    codes = quantize(torch.tensor([-1.0, 0.0, 0.49, 0.5, 0.999, 1.0, 7.0]), bins=4)
    assert codes.tolist() == [0, 0, 1, 2, 3, 3, 3]
    with pytest.raises(InputError, match="bins"):
        quantize(torch.zeros(3), bins=1)
    with pytest.raises(InputError, match="codes"):
        quantize(torch.tensor([0, 9]), bins=4)
    with pytest.raises(InputError, match="NaN"):
        pairwise_mi(np.array([[0.1, np.nan], [0.2, 0.3]]))


def test_deterministic(stack):
    a = pairwise_similarity(stack, "mi", bins=16).numpy()
    b = pairwise_similarity(stack, "mi", bins=16).numpy()
    np.testing.assert_array_equal(a, b)


def test_unknown_metric_and_scores(stack):
    with pytest.raises(InputError, match="unknown metric"):
        pairwise_similarity(stack, "ssim")
    sim = np.array([[1.0, 0.5, 0.1], [0.5, 1.0, 0.3], [0.1, 0.3, 1.0]])
    np.testing.assert_allclose(mean_similarity(sim), [0.3, 0.4, 0.2])
    with pytest.raises(InputError):
        mean_similarity(np.ones((1, 1)))


def test_metric_names_agree_with_the_command():
    from proxy_bundle.selection import similarity, subset

    assert subset.METRICS == similarity.METRICS


def test_accelerator_bincount_kernel_matches(stack):
    """The kernel used with CUDA bincount, run here on CPU tensors: same joint entropies as the CPU kernel."""
    from proxy_bundle.selection.similarity import _joint_entropy_bincount, _joint_entropy_bincount_device

    codes = quantize(stack, 16)
    np.testing.assert_allclose(_joint_entropy_bincount_device(codes, 16, None).numpy(),
                               _joint_entropy_bincount(codes, 16, 1, None).numpy(), atol=1e-12)
