"""Two search workers sharing one study on a real PostgreSQL server (started by tests/postgres.sh)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

import optuna
import pytest

HERE = Path(__file__).resolve().parent
PASSWORD = "pb-s3cret:pw"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server on loopback for this module; installs Debian's postgresql when missing (root)."""
    directory = tempfile.mkdtemp(prefix="pb-postgres-")
    port = _free_port()
    script = HERE / "postgres.sh"
    proc = subprocess.run(["bash", str(script), "start", directory, str(port), PASSWORD], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        reason = f"PostgreSQL could not be started by {script}: {(proc.stderr or proc.stdout).strip()[-800:]}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield f"postgresql+psycopg2://postgres:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(["bash", str(script), "stop", directory], capture_output=True, timeout=120)


def test_two_workers_share_the_search_exactly_once(postgres_url, tmp_path):
    out = tmp_path / "hpo"
    log = tmp_path / "trainings.log"
    env = {**os.environ, "TOY_SLEEP": "0.3", "TOY_LOG": str(log), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(HERE / "hpo_toy_search.py"), postgres_url, str(out), "6", "2"]
    workers = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=240) for w in workers]
    for w, (stdout, stderr) in zip(workers, outputs):
        assert w.returncode == 0, stderr[-3000:]
        # Credentials never reach logs or results.
        assert PASSWORD not in stdout + stderr and quote(PASSWORD, safe="") not in stdout + stderr
    bests = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    assert bests[0]["best"] == bests[1]["best"]
    assert "***" in bests[0]["storage"]

    results_text = (out / "results.json").read_text()
    assert quote(PASSWORD, safe="") not in results_text and PASSWORD not in results_text
    res = json.loads(results_text)
    p1 = [t for t in res["trials"] if t["phase"] == 1]
    p2 = [t for t in res["trials"] if t["phase"] == 2]
    # Every slot exactly once, every phase-2 rank exactly once, nothing trained twice.
    assert sorted(t["slot"] for t in p1 if t["state"] == "COMPLETE") == list(range(6))
    assert sorted(t["rank"] for t in p2 if t["state"] == "COMPLETE") == [0, 1]
    lines = log.read_text().splitlines()
    assert len(lines) == 8, lines
    assert len({line.split()[0] for line in lines}) == 8

    storage = optuna.storages.RDBStorage(postgres_url)
    phase1 = optuna.load_study(study_name="toy", storage=storage).get_trials()
    phase2 = optuna.load_study(study_name="toy-phase2", storage=storage).get_trials()
    assert len(phase2) == 2  # planned once: no duplicate enqueues
    ran = [t for t in phase1 if not t.user_attrs.get("surplus")]
    assert len(ran) == 6
    # Both workers trained phase-1 trials.
    assert len({t.user_attrs["worker"] for t in ran}) == 2
    storage.engine.dispose()
