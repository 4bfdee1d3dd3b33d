"""Helpers for the bundle tests: the bundles' folders and their ``scripts`` packages imported under unique names."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
NAMES = ("prostate_mri_proxy_segmentation", "spleen_ct_proxy_segmentation")


def load_scripts(bundle: str | Path) -> ModuleType:
    """The bundle's ``scripts`` package, imported as ``<bundle>_scripts`` so both bundles can be loaded at once
    (each bundle calls its own package ``scripts``)."""
    root = Path(bundle) if isinstance(bundle, Path) else BUNDLES / bundle
    name = f"{root.name}_scripts"
    with _no_bytecode():  # the tests leave the bundles' folders as they are
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, root / "scripts" / "__init__.py",
                                                          submodule_search_locations=[str(root / "scripts")])
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        for sub in ("data", "progress", "networks", "scaling", "validation", "errors"):
            importlib.import_module(f"{name}.{sub}")
    return sys.modules[name]


@contextlib.contextmanager
def _no_bytecode() -> Iterator[None]:
    saved = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = saved


@contextlib.contextmanager
def bundle_importable(root: Path) -> Iterator[None]:
    """Make ``import scripts`` find ``root/scripts`` (what running from the bundle folder does), and forget it after."""

    def owned() -> dict:
        return {k: v for k, v in sys.modules.items() if k == "scripts" or k.startswith("scripts.")}

    saved = owned()
    for key in saved:
        del sys.modules[key]
    sys.path.insert(0, str(root))
    try:
        with _no_bytecode():
            yield
    finally:
        sys.path.remove(str(root))
        for key in owned():
            del sys.modules[key]
        sys.modules.update(saved)
