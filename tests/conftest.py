"""Shared fixtures: tiny phantom datasets (32^3) generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

# Every test trains tiny networks (32^3 patches, 2-8 channels) that need no accelerator. On a CUDA machine their
# trainings (subprocesses inherit this) would otherwise take the GPU: cuDNN autotuning (cudnn.benchmark) of fp16
# 3-D kernels for such odd shapes, CUDA start-up in every trial process and AMP make them slow and their scores
# machine-dependent. Pinned to the CPU here, before torch initialises CUDA; PROXY_BUNDLE_TEST_GPU=1 opts in.
if os.environ.get("PROXY_BUNDLE_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest


def _phantom(tmp_path_factory: pytest.TempPathFactory, task: str) -> Path:
    from proxy_bundle.phantoms.generate import generate_dataset

    out = tmp_path_factory.mktemp(task)
    generate_dataset(task, out, num_cases=8, num_external=2, size=32, seed=0)
    return out


@pytest.fixture(scope="session")
def spleen_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spleen CT phantom in MSD layout: 8 training cases, 2 external, 32^3."""
    return _phantom(tmp_path_factory, "spleen_ct")


@pytest.fixture(scope="session")
def prostate_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prostate MR phantom in MSD layout: 8 training cases, 2 external, 32^3."""
    return _phantom(tmp_path_factory, "prostate_mr")
