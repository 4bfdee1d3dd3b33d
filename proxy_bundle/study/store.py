"""Resumable store of study runs: one JSON per (configuration, variant), written atomically, and the table.

A run is reused on a re-run only when its stored ``spec_hash`` matches the current run specification
(configuration, variant, epochs, dataset content, template content, ...), so changing a study setting never
mixes results of two different studies in one table; a stale file is simply overwritten by the new run.
The specification holds content hashes, not paths, so a table carries over between machines.

The *table* is the store exported as one JSON Lines file (one run per line, sorted): the tabular benchmark
that is committed and that a study on another machine or in a later invocation imports and extends.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from proxy_bundle.atomic import ensure_dir, write_json, write_text

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

    def import_table(self, table: str | Path) -> int:
        """Copy the runs of a JSON Lines table into the store (a stored run of the same spec is kept);
        returns how many were added. A missing table adds nothing; an unreadable line is skipped."""
        added = 0
        try:
            lines = Path(table).read_text().splitlines()
        except OSError:
            return 0
        for line in lines:
            try:
                rec = json.loads(line)
                cid, variant, spec = rec["config_id"], rec["variant"], rec["spec"]
            except (ValueError, KeyError, TypeError):
                continue
            if rec.get("status") != "ok" or self.get(cid, variant, spec) is not None:
                continue
            write_json(self.path(cid, variant), rec)
            added += 1
        return added

    def export_table(self, table: str | Path, keep: Iterable[tuple[str, str, str]] | None = None) -> int:
        """Write the stored runs as a JSON Lines table (atomically), only ``(config_id, variant, spec_hash)``
        in ``keep`` when given; returns the number of rows."""
        wanted = set(keep) if keep is not None else None
        rows = [r for r in self.records()
                if wanted is None or (r.get("config_id"), r.get("variant"), r.get("spec_hash")) in wanted]
        rows.sort(key=lambda r: (str(r.get("variant")), str(r.get("config_id"))))
        write_text(table, "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows))
        return len(rows)

    def records(self) -> Iterator[dict]:
        """Every readable stored record (any spec)."""
        for p in sorted(self.root.glob("*/*.json")):
            try:
                yield json.loads(p.read_text())
            except (OSError, ValueError):
                continue
