"""Measure how many proxy trainings one GPU should run at once (``--trials_per_device auto``).

A proxy network leaves a large GPU mostly idle (measured on an H200: a width-0.25 SegResNet runs only 2.1x faster per
step than the full one at 1/16 of the FLOPs), so several proxy trials per GPU raise the aggregate throughput, up to
a point. :func:`probe_packing` starts N = 1, 2, 4, 8 concurrent training processes on one device, each timing
training steps of the trial's own network, ROI, batch size and AMP setting on random tensors already on the device,
and :func:`~proxy_bundle.hpo.devices.pack_choice` picks the smallest N within 10 % of the best aggregate steps/s
whose memory fits. Processes, not threads: that is how the workers share the GPU.

``python -m proxy_bundle.hpo.probe BUNDLE_DIR SECONDS OUT_JSON`` is one such process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from proxy_bundle.atomic import ensure_dir, write_json
from proxy_bundle.hpo.devices import pack_choice

__all__ = ["measure_steps", "probe_packing"]


def measure_steps(bundle_dir: str | os.PathLike, seconds: float, warmup_steps: int = 5) -> dict[str, Any]:
    """Train the bundle's network on random data for ``seconds``: steps/s and peak device memory (bytes)."""
    import importlib.util

    import torch

    scripts = Path(bundle_dir) / "scripts"
    spec = importlib.util.spec_from_file_location("proxy_probe_pipeline", scripts / "pipeline.py")
    pl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pl)
    configs = sorted(str(p) for p in (Path(bundle_dir) / "configs").iterdir() if p.suffix in (".yaml", ".json"))
    cfg = pl.settings(pl.load_config(configs, {}))
    name, kwargs = pl.network_spec(cfg)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    torch.backends.cudnn.benchmark = not cfg.get("deterministic")
    model = pl.build_network(name, kwargs).to(device)
    roi = [int(r) for r in cfg["roi_size"]]
    batch = int(cfg["batch_size"]) * int(cfg.get("num_patches_per_image", 1))
    classes = int(cfg["output_classes"])
    image = torch.randn(batch, int(cfg["input_channels"]), *roi, device=device)
    label = torch.randint(0, classes, (batch, 1, *roi), device=device)
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    use_amp = bool(cfg["amp"]) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            out = model(image)
            loss = loss_fn(out[0] if isinstance(out, (list, tuple)) else out, label)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(warmup_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        steps += 1
        if device.type == "cuda" and steps % 5 == 0:
            torch.cuda.synchronize()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    peak = float(torch.cuda.max_memory_reserved()) if device.type == "cuda" else 0.0
    total = float(torch.cuda.get_device_properties(0).total_memory) if device.type == "cuda" else None
    return {"steps": steps, "seconds": elapsed, "steps_per_s": steps / elapsed, "peak_bytes": peak,
            "total_bytes": total, "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}


def probe_packing(bundle_dir: str | os.PathLike, device_env: Mapping[str, str], out_dir: str | os.PathLike, *,
                  candidates: Sequence[int] = (1, 2, 4, 8), seconds: float = 8.0,
                  timeout_s: float = 300.0) -> dict[str, Any]:
    """Aggregate steps/s of N concurrent trainings of the bundle's network, for N in ``candidates`` (stopping once
    it falls or memory runs out), and the chosen N. Written to ``out_dir/probe.json``; returned."""
    out = ensure_dir(Path(out_dir))
    env = {**os.environ, **device_env}
    rows: dict[int, dict[str, Any]] = {}
    for n in candidates:
        files = [out / f"probe_n{n}_{i}.json" for i in range(n)]
        procs = [subprocess.Popen([sys.executable, "-m", "proxy_bundle.hpo.probe", str(bundle_dir), str(seconds),
                                   str(f)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for f in files]
        ok = True
        for p in procs:
            try:
                _, err = p.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
                ok = False
                continue
            ok = ok and p.returncode == 0
        results = [json.loads(f.read_text()) for f in files if f.is_file()]
        if not ok or len(results) != n:
            break  # out of memory (or another failure) at this N: the smaller ones stand
        rows[n] = {"aggregate_steps_per_s": sum(r["steps_per_s"] for r in results),
                   "peak_bytes": max(r["peak_bytes"] for r in results), "total_bytes": results[0]["total_bytes"],
                   "device": results[0]["device"]}
        if len(rows) >= 2 and rows[n]["aggregate_steps_per_s"] < max(
                r["aggregate_steps_per_s"] for k, r in rows.items() if k != n):
            break  # past the peak
    total = next((r["total_bytes"] for r in rows.values() if r["total_bytes"]), None)
    chosen = pack_choice({n: r["aggregate_steps_per_s"] for n, r in rows.items()},
                         {n: r["peak_bytes"] for n, r in rows.items()}, total)
    summary = {"candidates": {str(n): r for n, r in rows.items()}, "trials_per_device": chosen,
               "seconds_per_probe": seconds,
               "throughput_ratio": (rows[chosen]["aggregate_steps_per_s"] / rows[1]["aggregate_steps_per_s"]
                                    if 1 in rows and chosen in rows else None)}
    write_json(out / "probe.json", summary)
    return summary


if __name__ == "__main__":
    bundle, secs, dest = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    write_json(dest, measure_steps(bundle, secs))
