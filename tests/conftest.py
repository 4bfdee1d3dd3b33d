"""Shared fixtures: tiny phantom datasets (32^3) generated once per test session."""

from __future__ import annotations

from pathlib import Path

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
