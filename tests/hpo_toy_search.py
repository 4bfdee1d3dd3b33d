"""Run a two-phase search over the toy trainer (a worker process for the resume and multi-worker tests).

usage: python hpo_toy_search.py STORAGE_URL OUT_DIR [n_trials] [top_k] [pruner]
Prints the best parameters and score as one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy_bundle.hpo.api import run_search  # noqa: E402
from proxy_bundle.hpo.engine import SearchConfig  # noqa: E402
from proxy_bundle.hpo.runners import CommandRunner, Fidelity  # noqa: E402
from proxy_bundle.hpo.space import parse_space  # noqa: E402

SPACE = {"x": {"type": "float", "low": -1.0, "high": 1.0},
         "y": {"type": "float", "low": 1e-3, "high": 1.0, "log": True}}


def config(out_dir: str, n_trials: int = 5, top_k: int = 2, pruner: str = "none") -> SearchConfig:
    return SearchConfig(study_name="toy", space=parse_space(SPACE, "toy"),
                        proxy=Fidelity("proxy-both", width=0.5, epochs=2), full=Fidelity("full", epochs=3),
                        n_trials=n_trials, top_k=top_k, seed=7, pruner=pruner, out_dir=out_dir,
                        heartbeat_s=1.0, grace_s=20.0, poll_s=0.2, progress_bar=False)


def main() -> None:
    url, out = sys.argv[1], sys.argv[2]
    n_trials = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    top_k = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    pruner = sys.argv[5] if len(sys.argv) > 5 else "none"
    plots = os.environ.get("TOY_PLOTS", "0") == "1"
    runner = CommandRunner([sys.executable, str(Path(__file__).with_name("hpo_toy_trainer.py")), "run"], poll_s=0.1)
    summary = run_search(config(out, n_trials, top_k, pruner), runner, url, proxy_mode="both", plots=plots)
    print(json.dumps({"best": summary["best"], "storage": summary["storage"]}))


if __name__ == "__main__":
    main()
