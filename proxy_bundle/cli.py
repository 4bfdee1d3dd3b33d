"""``python -m proxy_bundle <command>`` / ``proxy-bundle <command>``.

Every command is a plain, documented function; its command line is built from its signature and docstring
by jsonargparse, so a parameter added to a command function is a flag at once, with its docstring line as
help. jsonargparse (the parser behind PyTorch Lightning's CLI) was chosen over python-fire, click and typer
because it derives a *strict* argparse parser from the signature as it stands (fire accepts any flag and
reports a typo only after the command has run; click/typer would need every option declared a second time
in decorators), type-checks values against the annotations (``int | None``, ``Literal[...]``) and reads
``--flag=false`` as False.

Before any work: an unknown flag, a missing required flag or a value of the wrong type prints one line
``error: <flag>: <problem>`` (naming the closest valid flag for a typo) and exits with code 2.
Commands are imported lazily, so ``--help`` and the command table start fast. A
:class:`~proxy_bundle.errors.ProxyBundleError` raised by a command becomes ``error: <message>`` and exit
code 2 (no traceback); Ctrl-C exits 130; a closed stdout pipe (``... | head``) ends quietly.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import os
import re
import sys
import textwrap
from typing import Any, Callable, NoReturn, Sequence, get_args

from proxy_bundle import __version__
from proxy_bundle.errors import ProxyBundleError

PROG = "proxy_bundle"

# command -> ("module:function", one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "phantoms": ("proxy_bundle.phantoms.generate:phantoms", "Generate a multi-site phantom dataset (MSD layout)."),
    "validate": ("proxy_bundle.validation:validate", "Check a datalist/dataset.json and its NIfTI files."),
    "scale": ("proxy_bundle.networks.command:scale", "Tabulate measured cost of proxy networks; pick one under a budget."),
    "study": ("proxy_bundle.study.command:study", "Measure how well proxy data/networks rank configurations; report."),
    "select": ("proxy_bundle.selection.subset:select", "Select a proxy subset of the training cases by image similarity."),
    "analyze": ("proxy_bundle.selection.analyzer:analyze", "Auto3DSeg DataAnalyzer plus proxy-data selection (datastats.yaml)."),
    "hpo": ("proxy_bundle.hpo.command:hpo", "Two-phase proxy hyper-parameter search (Optuna): proxy trials, then top-k at full fidelity."),
    "export": ("proxy_bundle.templates.export:export", "Write the search's winner into an Auto3DSeg AutoRunner work dir."),
}

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class UsageError(Exception):
    """A command line that cannot be run; the message is one line naming the flag."""


def load_command(command: str) -> Callable:
    """The function behind ``command`` (imports its module).

    Raises:
        KeyError: ``command`` is not in :data:`COMMANDS`.
    """
    target, _ = COMMANDS[command]
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


_load = load_command  # older name, still imported by callers


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: python -m {PROG} <command> [--help] [options]", f"       python -m {PROG} --version", "",
             "commands:"]
    lines += [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", f"Run `python -m {PROG} <command> --help` for a command's flags."]
    return "\n".join(lines)


def _closest(word: str, candidates: Sequence[str]) -> str | None:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return match[0] if match else None


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return [opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")]


def _is_bool_action(action: argparse.Action) -> bool:
    hint = getattr(action, "_typehint", None)
    return hint is bool or (hint is not None and set(getattr(hint, "__args__", ())) == {bool, type(None)})


def normalise_bools(parser: argparse.ArgumentParser, args: Sequence[str]) -> list[str]:
    """Rewrite boolean flags to the spelling jsonargparse reads: ``--flag`` alone and ``--flag=1`` -> true.

    jsonargparse reads a bool from YAML (true/false/yes/no); the CLI promises true/false/1/0 and a bare
    ``--flag`` as well. Any other value is left as given, so the parser rejects it naming the flag.
    """
    bools = {opt for action in parser._actions if _is_bool_action(action) for opt in action.option_strings}
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name in bools:
            if not eq:
                nxt = args[i + 1] if i + 1 < len(args) else None
                if nxt is not None and nxt.lower() in _TRUE + _FALSE:
                    value, i = nxt, i + 1
                elif nxt is None or nxt.startswith("--"):
                    value = "true"
                else:
                    value, i = nxt, i + 1
            low = value.lower()
            value = "true" if low in _TRUE else "false" if low in _FALSE else value
            arg = f"{name}={value}"
        out.append(arg)
        i += 1
    return out


def _one_line(message: str, parser: argparse.ArgumentParser, command: str) -> str:
    """Turn an argparse/jsonargparse error (often several lines) into one line ``<flag>: <problem>``."""
    flags = _flags(parser)
    unknown = re.match(r"unrecognized arguments: (.*)", message, flags=re.S)
    if unknown:
        words = unknown.group(1).split()
        first = next((w for w in words if w.startswith("-")), words[0] if words else "")
        name = first.split("=")[0]
        if not name.startswith("-"):
            return f"{first}: unexpected argument; options are flags (--name value or --name=value)"
        hint = _closest(name, flags)
        return f"{name}: unknown flag for {command}" + (f" (did you mean {hint}?)" if hint else "; see --help")
    key = re.search(r'Parser key "([^"]+)"', message)
    if key:
        flag = "--" + key.group(1)
        given = re.search(r"(?:Given value|Got value): (.*)", message)
        action = next((a for a in parser._actions if flag in a.option_strings), None)
        hint = getattr(action, "_typehint", None)
        if action is not None and _is_bool_action(action):
            expected = "true/false/1/0"
        elif hint is not None and "Literal" in str(hint):
            expected = "one of " + ", ".join(map(str, get_args(hint)))
        else:
            expected = _type_name(hint) if hint is not None else "another value"
        if given is None:
            return f"{flag}: {' '.join(message.split())}"
        return f"{flag}: invalid value {given.group(1).strip()!r} (expected {expected})"
    required = re.match(r"the following arguments are required: (.*)", message)
    if required:
        names = [n.strip() for n in required.group(1).split(",")]
        names = [n if n.startswith("-") else f"--{n}" for n in names]
        return f"{', '.join(names)}: required flag{'s' if len(names) > 1 else ''} missing"
    arg = re.match(r"argument (\S+?)(?:/\S+)?: (.*)", message, flags=re.S)
    if arg:
        return f"{arg.group(1)}: {' '.join(arg.group(2).split())}"
    return " ".join(message.split())


def _type_name(hint: Any) -> str:
    text = str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
    if text.startswith("Optional[") and text.endswith("]"):
        text = text[len("Optional["):-1] + " | None"
    return text.replace(" | None", " or null").replace("NoneType", "null")


def build_parser(command: str, func: Callable | None = None):
    """The strict jsonargparse parser of ``command`` (one flag per parameter of its function).

    Errors end in :class:`UsageError` (one line) instead of argparse's exit, so the caller decides.
    """
    from jsonargparse import ArgumentParser
    from jsonargparse._formatters import DefaultHelpFormatter

    func = func or load_command(command)

    class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
        """Keeps the paragraphs of the command's docstring; jsonargparse's per-flag type/default notes."""

        def _split_lines(self, text: str, width: int) -> list[str]:
            # argparse breaks lines at hyphens: "per-case" would read as "per-" / "case".
            return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False) or [""]

    class Parser(ArgumentParser):
        def error(self, message: str, ex: Exception | None = None) -> NoReturn:
            raise UsageError(_one_line(str(message), self, command)) from None

    doc = inspect.getdoc(func) or ""
    description = doc.split("\n\nArgs:")[0].split("\nArgs:")[0].strip()
    parser = Parser(prog=f"{PROG} {command}", description=description, exit_on_error=False, allow_abbrev=False,
                    formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"proxy-bundle {__version__}")
    parser.add_function_arguments(func, as_group=False)
    return parser


def parse_command(command: str, args: Sequence[str]) -> tuple[Callable, dict[str, Any]]:
    """Parse ``args`` for ``command``: (its function, keyword arguments). Nothing runs yet.

    Raises:
        UsageError: unknown command or flag, missing required flag, or a value of the wrong type.
    """
    if command not in COMMANDS:
        hint = _closest(command, list(COMMANDS))
        raise UsageError(f"unknown command {command!r}" + (f" (did you mean {hint!r}?)" if hint
                                                           else f"; one of {', '.join(COMMANDS)}"))
    func = load_command(command)
    parser = build_parser(command, func)
    namespace = parser.parse_args(normalise_bools(parser, list(args)))
    kwargs = {k: v for k, v in namespace.as_dict().items() if k in inspect.signature(func).parameters}
    return func, kwargs


def _closed_pipe() -> NoReturn:
    # Python's documented recipe (signal docs, "Note on SIGPIPE"): point stdout at devnull so the flush at
    # interpreter exit does not raise a second time, and exit as a SIGPIPE'd process would (128 + 13).
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    raise SystemExit(141)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m proxy_bundle`` and the ``proxy-bundle`` console script.

    Exit codes: 0 done, 2 bad command line or bad input (one line on stderr), 130 interrupted, 141 stdout
    closed by the reader.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args or args[0] in ("-h", "--help", "help"):
            print(_usage())
            return
        if args[0] == "--version":
            print(f"proxy-bundle {__version__}")
            return
        try:
            func, kwargs = parse_command(args[0], args[1:])
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        from proxy_bundle.logs import quiet_libraries

        try:
            with quiet_libraries():
                func(**kwargs)
        except ProxyBundleError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        sys.stdout.flush()
    except BrokenPipeError:
        _closed_pipe()
