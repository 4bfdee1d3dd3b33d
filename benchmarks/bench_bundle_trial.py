"""Cost of one search trial of a bundle at full fidelity versus at its proxy fidelity.

Runs the same training settings through :class:`proxy_bundle.hpo.bundle_runner.BundleRunner` (exactly what a
search trial runs: ``python -m monai.bundle run`` of the bundle's train config) twice: once with the bundle's own
network on all training cases, once with the proxy network (``--width``/``--blocks``) on proxy data selected with
``select_proxy_data`` (``--data_fraction``). Prints the wall time of both trials (including process start-up and data
loading, as a search pays them), their speed-up and their validation Dice.

    python benchmarks/bench_bundle_trial.py --bundle spleen_ct_proxy_segmentation --epochs 10 --size 64 --cases 24

Timings are wall-clock on whatever machine runs the script; run it on a quiet machine for figures worth quoting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TASKS = {"spleen_ct_proxy_segmentation": "spleen_ct", "prostate_mri_proxy_segmentation": "prostate_mr"}


def bundle_split(bundle: Path, overrides: dict) -> dict:
    """The bundle's own train/validation split (its ``split`` config id) for ``overrides``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update(overrides)
    sys.path.insert(0, str(bundle))  # the config imports the bundle's own `scripts` package
    try:
        return parser.get_parsed_content("split")
    finally:
        sys.path.remove(str(bundle))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", choices=sorted(TASKS), default="spleen_ct_proxy_segmentation")
    ap.add_argument("--data", help="MSD-layout dataset (default: generate phantoms)")
    ap.add_argument("--cases", type=int, default=24, help="phantom training cases")
    ap.add_argument("--size", type=int, default=64, help="phantom size (voxels per axis)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--roi", type=int, nargs=3, default=None, help="patch size (default: the bundle's)")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--blocks", type=float, default=0.5)
    ap.add_argument("--data_fraction", type=float, default=0.5)
    ap.add_argument("--work", help="work folder (default: a temporary one)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help='extra train-config override for both trials, e.g. --set pixdim=[0.75,0.75,1.5]')
    args = ap.parse_args()

    from proxy_bundle.hpo.bundle_runner import BundleRunner, select_proxy_data
    from proxy_bundle.hpo.runners import Fidelity

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_bundle_trial_"))
    data = Path(args.data) if args.data else None
    if data is None:
        from proxy_bundle.phantoms.generate import generate_dataset

        data = generate_dataset(TASKS[args.bundle], work / "data", num_cases=args.cases, num_external=0,
                                size=args.size, seed=0)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    base = {"dataset_dir": str(data), "val_interval": 1, "num_workers": 0}
    if args.roi:
        base["roi_size"] = list(args.roi)
    for item in args.set:
        key, _, value = item.partition("=")
        base[key] = json.loads(value)
    runner = BundleRunner(REPO / "bundles" / args.bundle, base_overrides=base, env=env)
    t0 = time.monotonic()
    proxy_list = select_proxy_data(bundle_split(REPO / "bundles" / args.bundle, base), data,
                                   work / "proxy_datalist.json", fraction=args.data_fraction)
    select_s = time.monotonic() - t0
    fidelities = {
        "full": Fidelity(name="full", epochs=args.epochs),
        "proxy": Fidelity(name="proxy", datalist=proxy_list, width=args.width, blocks=args.blocks, epochs=args.epochs),
    }
    results = {}
    for name, fid in fidelities.items():
        result = runner.run({}, fid, work / name, lambda epoch, dice: False)
        results[name] = result
        print(f"{name:5s}: {result.wall_s:7.1f} s for {args.epochs} epochs, best Dice {result.score:.3f}, "
              f"per-epoch Dice {[round(s, 3) for _, s in result.scores]}")
    full, proxy = results["full"], results["proxy"]
    print(f"bench_bundle_trial: {args.bundle} {args.epochs} epochs: full trial {full.wall_s:.1f} s, proxy trial "
          f"(width {args.width}, blocks {args.blocks}, {args.data_fraction:.0%} data) {proxy.wall_s:.1f} s "
          f"-> {full.wall_s / proxy.wall_s:.2f}x cheaper (+{select_s:.1f} s one-off selection); "
          f"best Dice full {full.score:.3f} / proxy {proxy.score:.3f}")


if __name__ == "__main__":
    main()
