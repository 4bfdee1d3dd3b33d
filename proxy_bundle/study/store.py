"""Resumable store of study runs: one JSON per (configuration, variant), written atomically.

A run is reused on a re-run only when its stored ``spec_hash`` matches the current run specification
(configuration, variant, epochs, dataset, ...), so changing a study setting never mixes results of two
different studies in one table; a stale file is simply overwritten by the new run.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

from proxy_bundle.atomic import ensure_dir, write_json

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def spec_hash(spec: Mapping[str, Any]) -> str:
    """Stable short hash of a JSON-serialisable run specification."""
    blob = json.dumps(spec, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class RunStore:
    """``<root>/<variant>/<config_id>.json`` files, each a finished run's result."""

    def __init__(self, root: str | Path) -> None:
        self.root = ensure_dir(root)

    def path(self, config_id: str, variant: str) -> Path:
        return self.root / _SAFE.sub("_", variant) / f"{_SAFE.sub('_', config_id)}.json"

    def get(self, config_id: str, variant: str, spec: Mapping[str, Any] | None = None) -> dict | None:
        """The stored result, or None when absent, unreadable (e.g. a foreign partial file) or for another spec."""
        p = self.path(config_id, variant)
        try:
            record = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        if spec is not None and record.get("spec_hash") != spec_hash(spec):
            return None
        return record

    def put(self, config_id: str, variant: str, spec: Mapping[str, Any], result: Mapping[str, Any]) -> dict:
        """Store a finished run atomically and return the stored record."""
        record = {"config_id": config_id, "variant": variant, "spec_hash": spec_hash(spec), "spec": dict(spec)}
        record.update(result)
        write_json(self.path(config_id, variant), record)
        return record

    def records(self) -> Iterator[dict]:
        """Every readable stored record (any spec)."""
        for p in sorted(self.root.glob("*/*.json")):
            try:
                yield json.loads(p.read_text())
            except (OSError, ValueError):
                continue
