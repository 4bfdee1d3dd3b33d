"""A deterministic stand-in training script for the search-engine tests.

It speaks the template's protocol (fire ``run`` with ``--key=value`` overrides, ``<ckpt_path>/progress.yaml``
rewritten atomically after every epoch) but its "Dice" is a closed-form function of the parameters, so engine
tests run in seconds and know the right answer. ``TOY_SLEEP`` seconds pass per epoch (to be killed mid-trial).
``TOY_LOG`` (a file) gets one line per started run, so tests can count trainings.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import yaml


def score(x: float, y: float, epoch: int, epochs: int, proxy: bool) -> float:
    # Converges with epochs; the proxy is a monotone distortion of the full objective (same ranking).
    quality = math.exp(-((x - 0.3) ** 2) - (math.log10(y) + 2.0) ** 2 / 4.0)
    progress = 1.0 - math.exp(-3.0 * epoch / epochs)
    value = quality * progress
    return 0.5 * value if proxy else value


def run(ckpt_path: str, x: float = 0.0, y: float = 0.01, num_epochs: int = 2, **override) -> None:
    out = Path(ckpt_path)
    out.mkdir(parents=True, exist_ok=True)
    if os.environ.get("TOY_LOG"):
        with open(os.environ["TOY_LOG"], "a") as fh:
            fh.write(f"{ckpt_path} x={x!r} y={y!r}\n")
    proxy = bool(override.get("proxy#enabled", False))
    history, best, best_epoch = [], -1.0, -1
    start = time.time()
    for epoch in range(1, int(num_epochs) + 1):
        time.sleep(float(os.environ.get("TOY_SLEEP", "0.05")))
        dice = score(float(x), float(y), epoch, int(num_epochs), proxy)
        if dice > best:
            best, best_epoch = dice, epoch
        history.append({"epoch": epoch, "avg_dice_score": dice, "best_avg_dice_score": best,
                        "best_epoch": best_epoch, "elapsed_s": time.time() - start})
        tmp = out / ".progress.yaml.tmp"
        tmp.write_text(yaml.safe_dump(history))
        os.replace(tmp, out / "progress.yaml")
    (out / "model.pt").write_bytes(b"toy")


def _parse(argv: list[str]) -> dict:
    # Same "--key=value" (python literal) convention as python-fire, without fire's import time.
    import ast

    kwargs = {}
    for arg in argv:
        key, _, raw = arg[2:].partition("=")
        try:
            kwargs[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            kwargs[key] = raw
    return kwargs


if __name__ == "__main__":
    assert sys.argv[1] == "run", sys.argv
    run(**_parse(sys.argv[2:]))
