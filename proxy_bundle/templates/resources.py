"""Where the shipped algorithm templates and MONAI bundles are.

In a checkout they are ``algorithm_templates/`` and ``bundles/`` at the repository root. A built wheel carries
the same folders as package data of ``proxy_bundle.algorithm_templates`` and ``proxy_bundle.bundles`` (mapped in
``setup.py``), found here with :mod:`importlib.resources`, so an installed package needs no checkout.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

from proxy_bundle.errors import InputError

__all__ = ["bundles_dir", "templates_dir"]

_ROOT = Path(__file__).resolve().parents[2]


def _shipped(folder: str, package: str) -> Path:
    # The checkout wins: with an editable install, the package-data mapping points at whichever checkout was
    # installed, not necessarily the one being imported.
    local = _ROOT / folder
    if local.is_dir() and (_ROOT / "proxy_bundle").is_dir():
        return local
    try:
        res = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise InputError(f"this installation ships no {folder}/ (reinstall the package)", where=package) from None
    if isinstance(res, Path):
        return res
    # A data folder without __init__.py imports as a namespace package; its one location is the folder.
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise InputError(f"this installation ships no {folder}/ (reinstall the package)", where=package)
    return Path(locations[0])


def templates_dir() -> Path:
    """The folder holding the shipped Auto3DSeg algorithm templates (``proxyseg/`` ...)."""
    return _shipped("algorithm_templates", "proxy_bundle.algorithm_templates")


def bundles_dir() -> Path:
    """The folder holding the shipped MONAI bundles."""
    return _shipped("bundles", "proxy_bundle.bundles")
