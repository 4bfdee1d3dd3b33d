"""The command line: strict flags, booleans, full help, --version and one vocabulary on every command.

Everything here parses in-process (no command runs) except the closed-pipe check, which needs a real stdout.
"""

from __future__ import annotations

import inspect
import logging
import os
import subprocess
import sys
import typing
import warnings
from pathlib import Path

import pytest
import yaml

from proxy_bundle import __version__, cli
from proxy_bundle.cli import COMMANDS, load_command, main, parse_command

REPO = Path(__file__).resolve().parents[1]
ALL = sorted(COMMANDS)


def _required(command: str) -> list[str]:
    """The smallest set of flags the command needs to get past "required flag missing" (parsing only)."""
    func = load_command(command)
    hints = typing.get_type_hints(func)
    out: list[str] = []
    for name, param in inspect.signature(func).parameters.items():
        if param.default is inspect.Parameter.empty:
            choices = typing.get_args(hints.get(name)) if typing.get_origin(hints.get(name)) is typing.Literal else ()
            out += [f"--{name}", str(choices[0]) if choices else "x"]
    return out


REQUIRED = {command: _required(command) for command in ALL if _required(command)}


def _hints(command: str) -> dict[str, typing.Any]:
    return typing.get_type_hints(load_command(command))


def _bool_params(command: str) -> list[str]:
    return [name for name, hint in _hints(command).items() if hint is bool or hint == (bool | None)]


def _numeric_param(command: str) -> str:
    """A numeric flag of the command (its first boolean one where it has none)."""
    hints = _hints(command)
    numeric = [name for name, hint in hints.items() if hint in (int, float, int | None, float | None)]
    candidates = numeric or _bool_params(command)
    if not candidates:
        pytest.skip(f"{command} has no numeric or boolean flag")
    return candidates[0]


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the command function is entered (main enters quiet_libraries right before it)."""
    def started():
        raise AssertionError("the command started despite a bad command line")
    monkeypatch.setattr("proxy_bundle.logs.quiet_libraries", started)


def _error_line(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and captured.out == "", captured
    return lines[0]


@pytest.mark.parametrize("command", ALL)
def test_unknown_flag_names_the_closest_before_any_work(command, capsys, no_work):
    name = _numeric_param(command)
    typo = name[:-1] + "z" + name[-1]  # one inserted letter, e.g. --epochs -> --epochzs
    line = _error_line(capsys, [command, *REQUIRED.get(command, []), f"--{typo}", "1"])
    assert line == f"error: --{typo}: unknown flag for {command} (did you mean --{name}?)"
    # An abbreviation is not a flag either (argparse's prefix matching is off).
    assert _error_line(capsys, [command, *REQUIRED.get(command, []), f"--{name[:-1]}", "1"]).startswith(
        f"error: --{name[:-1]}: unknown flag")
    # A bare word is refused too (python-fire took it as a positional argument).
    assert "unexpected argument" in _error_line(capsys, [command, *REQUIRED.get(command, []), "stray"])


@pytest.mark.parametrize("command", ALL)
def test_bad_value_is_one_line_before_any_work(command, capsys, no_work):
    name = _numeric_param(command)
    line = _error_line(capsys, [command, *REQUIRED.get(command, []), f"--{name}", "abc"])
    assert line.startswith(f"error: --{name}: invalid value 'abc' (expected ")
    if command in REQUIRED:
        missing = REQUIRED[command][0]
        assert _error_line(capsys, [command]).startswith(f"error: {missing}")
        assert "required flag" in _error_line(capsys, [command])


@pytest.mark.parametrize("command", ALL)
def test_booleans_accept_true_false_1_0(command, capsys, no_work):
    names = _bool_params(command)
    base = [*REQUIRED.get(command, [])]
    for name in names:
        default = inspect.signature(load_command(command)).parameters[name].default
        cases = {f"--{name}=false": False, f"--{name}=False": False, f"--{name}=0": False, f"--{name}=true": True,
                 f"--{name}=1": True, f"--{name}=TRUE": True, f"--{name}": True}
        for arg, want in cases.items():
            assert parse_command(command, [*base, arg])[1][name] is want, arg
            # A bare flag followed by another flag is still true; a value may also follow as its own word.
            assert parse_command(command, [*base, *arg.split("=")])[1][name] is want, arg
        assert parse_command(command, base)[1][name] is default
        line = _error_line(capsys, [command, *base, f"--{name}=maybe"])
        assert line == f"error: --{name}: invalid value 'maybe' (expected true/false/1/0)"


@pytest.mark.parametrize("command", ALL)
def test_help_is_complete_and_version_is_printed(command, capsys):
    from docstring_parser import parse

    func = load_command(command)
    params = [p for p in inspect.signature(func).parameters]
    documented = {p.arg_name: p.description for p in parse(inspect.getdoc(func)).params}
    assert set(params) == set(documented), f"{command}: parameters and docstring Args differ"
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name, description in documented.items():
        assert f"--{name}" in text
        assert " ".join(description.split()) in text, f"{command} --{name}: help text cut"
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"proxy-bundle {__version__}"


def test_top_level_help_version_and_unknown_command(capsys):
    main([])
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    main(["--version"])
    assert capsys.readouterr().out.strip() == f"proxy-bundle {__version__}"
    assert _error_line(capsys, ["hpx"]) == "error: unknown command 'hpx' (did you mean 'hpo'?)"
    assert cli._closest("--epochz", ["--epochs", "--seed"]) == "--epochs"


def test_one_vocabulary_across_commands():
    """One name per concept: no command keeps a name that another concept uses elsewhere."""
    retired = {"fraction", "metric", "metrics", "workers", "selection_mode", "threads_per_trial"}
    seen: dict[str, set[str]] = {}
    for command in ALL:
        func = load_command(command)
        docs = {p.arg_name: p.description for p in __import__("docstring_parser").parse(inspect.getdoc(func)).params}
        for name in inspect.signature(func).parameters:
            assert name not in retired, f"{command} --{name}"
            seen.setdefault(name, set()).add(command)
        if "num_workers" in docs:
            assert "DataLoader" in docs["num_workers"], f"{command} --num_workers must mean DataLoader workers"
        if "n_jobs" in docs:
            assert "parallel" in docs["n_jobs"] or "side by side" in docs["n_jobs"], command
    # The concepts several commands share carry the same names.
    assert {"select", "analyze", "hpo", "study"} <= seen["data_fraction"]
    assert {"select", "analyze", "hpo"} <= seen["similarity"] and seen["mode"] >= {"select", "analyze", "hpo", "study"}


def test_bare_scale_uses_the_template_network(capsys):
    hp = yaml.safe_load((REPO / "algorithm_templates/proxyseg/configs/hyper_parameters.yaml").read_text())
    _, kwargs = parse_command("scale", [])
    assert kwargs["network"] == hp["network"]["name"] == "segresnetds"
    main(["scale"])
    out = capsys.readouterr().out
    assert out.startswith(f"SegResNetDS {{'init_filters': {hp['network']['init_filters']},")
    assert "pick: ProxySpec(" in out


def test_closed_pipe_ends_quietly(spleen_phantom):
    """`validate ... | head -0`: the reader is gone before the first line; no traceback, exit 141."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.run([sys.executable, "-m", "proxy_bundle", "validate", "--datalist",
                               str(spleen_phantom / "datalist.json")], stdout=write_end, stderr=subprocess.PIPE,
                              env=env, timeout=120, text=True)
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_quiet_libraries_silences_monai_info_and_library_future_warnings(capsys):
    from monai.apps.utils import get_logger

    from proxy_bundle.logs import quiet_libraries

    with quiet_libraries():
        logger = get_logger("monai.apps.auto3dseg.quiet_check")  # created inside, as lazily imported modules are
        logger.info("Generated: somewhere")
        logger.warning("still shown")
        with warnings.catch_warnings(record=True) as seen:  # keeps the filters quiet_libraries set
            warnings.warn_explicit("old MONAI API", FutureWarning, "monai/x.py", 1, module="monai.x")
            warnings.warn_explicit("our own", FutureWarning, "proxy_bundle/x.py", 1, module="proxy_bundle.x")
        assert [str(w.message) for w in seen] == ["our own"]
    out = capsys.readouterr().out
    assert "Generated" not in out and "still shown" in out
    assert logging.root.manager.disable == logging.NOTSET  # restored: library users keep their logging
    logger.info("after")
    assert "after" in capsys.readouterr().out


def test_a_command_prints_no_library_chatter(spleen_phantom, tmp_path):
    """MONAI's INFO lines (DataAnalyzer, BundleGen) and its FutureWarnings stay out of a command's output."""
    cfg = tmp_path / "input.yaml"
    cfg.write_text(f"modality: CT\ndataroot: {spleen_phantom}\ndatalist: {spleen_phantom / 'datalist.json'}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", "proxy_bundle", "analyze", "--input", str(cfg), "--work_dir",
                           str(tmp_path / "w"), "--count", "2", "--grid", "16", "--progress", "false"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert "INFO" not in text and "FutureWarning" not in text, text
    assert "selected 2 of" in proc.stdout
