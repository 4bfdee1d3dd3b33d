"""``python -m proxy_bundle <command>`` / ``proxy-bundle <command>``.

Commands are imported lazily so that ``--help`` and small commands start fast; each one is a plain
function documented for fire. A :class:`~proxy_bundle.errors.ProxyBundleError` becomes a one-line
message on stderr and exit code 2 (no traceback).
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Sequence

from proxy_bundle.errors import ProxyBundleError

# command -> ("module:function", one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "phantoms": ("proxy_bundle.phantoms.generate:phantoms", "Generate a multi-site phantom dataset (MSD layout)."),
    "validate": ("proxy_bundle.validation:validate", "Check a datalist/dataset.json and its NIfTI files."),
    "scale": ("proxy_bundle.networks.command:scale", "Tabulate measured cost of proxy networks; pick one under a budget."),
    "study": ("proxy_bundle.study.command:study", "Measure how well proxy data/networks rank configurations; report."),
    "select": ("proxy_bundle.selection.subset:select", "Select a proxy subset of the training cases by image similarity."),
    "analyze": ("proxy_bundle.selection.analyzer:analyze", "Auto3DSeg DataAnalyzer plus proxy-data selection (datastats.yaml)."),
    "hpo": ("proxy_bundle.hpo.command:hpo", "Two-phase proxy hyper-parameter search (Optuna): proxy trials, then top-k at full fidelity."),
}


def _load(command: str) -> Callable:
    target, _ = COMMANDS[command]
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m proxy_bundle <command> [--help] [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    import fire

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    command = args[0]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    try:
        fire.Fire(_load(command), command=args[1:], name=f"proxy_bundle {command}")
    except ProxyBundleError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
