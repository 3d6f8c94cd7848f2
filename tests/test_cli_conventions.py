"""Every CLI (`mega` and each container's `python -m <package>`) follows the same conventions.

Help names each option's value (no `<bool>`/`<str>` type metavars) and shows each
optional option's default; `--version` works; output that is not a terminal is never
wrapped or cut at 80 columns.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

BIN = Path(sys.executable).parent
# (module holding `app`, how a user starts it, the distribution it belongs to)
CLIS = [
    ("collector.__main__", [sys.executable, "-m", "collector"], "mega-data-collector"),
    ("processor.__main__", [sys.executable, "-m", "processor"], "mega-data-processor"),
    ("trainer.__main__", [sys.executable, "-m", "trainer"], "mega-model-training"),
    ("api_service.__main__", [sys.executable, "-m", "api_service"], "mega-api-service"),
    ("workflow.cli", [str(BIN / "mega")], "mega-workflow"),
]
TYPE_METAVAR = re.compile(r"<(bool|str|int|float|path|text)[^>]*>", re.IGNORECASE)
# Wide enough that no help row wraps, so each option's row is one line.
WIDE = {"COLUMNS": "400", "TERMINAL_WIDTH": "400"}


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


def _every_command() -> list[tuple[str, tuple[str, ...]]]:
    found = []
    for module, _, _ in CLIS:
        root = typer.main.get_command(importlib.import_module(module).app)
        found += [(module, path) for path, _ in _commands(root)]
    return found


def _help(module: str, path: tuple[str, ...]) -> tuple[str, Any]:
    app = importlib.import_module(module).app
    result = CliRunner().invoke(app, [*path, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return result.output, command


@pytest.mark.parametrize(
    ("module", "path"), [pytest.param(m, p, id=" ".join([m, *p])) for m, p in _every_command()]
)
def test_help_names_values_and_shows_defaults(module: str, path: tuple[str, ...]) -> None:
    output, command = _help(module, path)
    assert not TYPE_METAVAR.search(output), TYPE_METAVAR.findall(output)
    rows = output.splitlines()
    for param in command.params:
        if param.param_type_name != "option" or param.required or param.name == "version":
            continue
        longest = max(param.opts, key=len)
        start = re.compile(rf"^│\s*(\*\s*)?{re.escape(longest)}\b")
        [row] = [r for r in rows if start.search(r)]
        assert "[default: " in row, f"{module} {' '.join(path)}: {param.opts[0]}: {row.strip()}"


def test_every_command_summary_is_one_line() -> None:
    """A group's help lists each command by its help's first paragraph, line breaks
    kept: a summary written over two source lines showed broken mid-sentence there."""
    broken = []
    for module, _, _ in CLIS:
        root = typer.main.get_command(importlib.import_module(module).app)
        for path, command in _commands(root):
            summary = inspect.cleandoc(command.help or "").split("\n\n")[0]
            if "\n" in summary:
                broken.append(f"{module} {' '.join(path)}: {summary!r}")
    assert not broken, "put the summary on one line, the rest after a blank line:\n" + "\n".join(
        broken
    )


@pytest.mark.parametrize(("module", "argv", "distribution"), CLIS)
def test_version(module: str, argv: list[str], distribution: str) -> None:
    result = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"{distribution} \d+\.\d+\.\d+\S*\n", result.stdout), result.stdout


def test_piped_error_line_is_never_wrapped(tmp_path: Path) -> None:
    folder = tmp_path / ("a-folder-name-long-enough-that-the-error-line-passes-eighty-columns" * 2)
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"COLUMNS", "LINES"}}
    result = subprocess.run(
        [str(BIN / "mega"), "status"], cwd=folder, capture_output=True, text=True, env=env
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert str(folder) in line and line.startswith("mega: error: no dvc.yaml in ")


def test_piped_console_output_is_never_wrapped() -> None:
    code = "from common.cli import console_for; console_for().print('summary ' + 'x' * 300)"
    env = {k: v for k, v in os.environ.items() if k not in {"COLUMNS", "LINES"}}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout == "summary " + "x" * 300 + "\n"


PY = [sys.executable, "-m"]
MEGA = [str(BIN / "mega")]
BAD_PARAMS = "train: {epochs: 0}\n"  # valid YAML, invalid value
# name: (command, params.yaml or None for valid ones, its error prefix, what the line says)
USAGE_ERRORS: dict[str, tuple[list[str], str | None, str, str]] = {
    "collector: unknown flag": (
        [*PY, "collector", "--out", "raw", "--limit", "5"], None, "collect",
        "No such option: --limit",
    ),
    "collector: missing --out": ([*PY, "collector"], None, "collect", "Missing option '--out'"),
    "collector: --out under a file": (
        [*PY, "collector", "--out", "afile/raw"], None, "collect",
        "--out afile/raw: afile is a file, not a folder",
    ),
    "collector: --params is a folder": (
        [*PY, "collector", "--out", "raw", "--params", "raw"], None, "collect",
        "--params raw: Is a directory; pass the params.yaml file",
    ),
    "collector: bad params.yaml": (
        [*PY, "collector", "--out", "raw"], BAD_PARAMS, "collect", "params.yaml: invalid",
    ),
    "processor: unknown flag": (
        [*PY, "processor", "--raw", "raw", "--out", "out", "--bogus"], None, "process",
        "No such option: --bogus",
    ),
    "processor: bad params.yaml": (
        [*PY, "processor", "--raw", "raw", "--out", "out"], BAD_PARAMS, "process",
        "params.yaml: invalid parameters: train.epochs",
    ),
    "processor: no raw store at --raw": (
        [*PY, "processor", "--raw", "nowhere", "--out", "out"], None, "process",
        "--raw nowhere: no manifest.jsonl there",
    ),
    "processor: --out under a file": (
        [*PY, "processor", "--raw", "raw", "--out", "afile/out"], None, "process",
        "--out afile/out: afile is a file, not a folder",
    ),
    "processor: --report-dir is a file": (
        [*PY, "processor", "--raw", "raw", "--out", "out", "--report-dir", "afile"], None,
        "process", "--report-dir afile: is a file",
    ),
    "trainer: unknown command": ([*PY, "trainer", "fit"], None, "trainer", "No such command"),
    "trainer train: bad params.yaml": (
        [*PY, "trainer", "train", "--data", "d", "--out", "c"], BAD_PARAMS, "train",
        "params.yaml: invalid parameters: train.epochs",
    ),
    "trainer train: no --out, no AIP_MODEL_DIR": (
        [*PY, "trainer", "train", "--data", "d"], None, "train",
        "Missing option '--out' (env var: 'AIP_MODEL_DIR')",
    ),
    "trainer train: no --data folder": (
        [*PY, "trainer", "train", "--data", "d", "--out", "c"], None, "train",
        "--data d: no such folder",
    ),
    "trainer train: --data is a raw store": (
        [*PY, "trainer", "train", "--data", "raw", "--out", "c"], None, "train",
        "--data raw: holds none of preprocess.json, labels.json, stats.json; pass the "
        "processed data folder",
    ),
    "trainer evaluate: --model is a raw store": (
        [*PY, "trainer", "evaluate", "--model", "raw", "--data", "raw", "--metrics", "m.json",
         "--details", "e.json"], None, "evaluate",
        "--model raw: holds none of preprocess.json, labels.json, lineage.json; pass the folder",
    ),
    "processor: --raw is not a raw store": (
        [*PY, "processor", "--raw", "afile", "--out", "out"], None, "process",
        "no manifest.jsonl there; pass the raw store the collect stage wrote",
    ),
    "trainer evaluate: no --model folder": (
        [*PY, "trainer", "evaluate", "--model", "m", "--data", "d", "--metrics", "m.json",
         "--details", "e.json"], None, "evaluate", "--model m: no such folder",
    ),
    "trainer register: bad params.yaml": (
        [*PY, "trainer", "register", "--model", "m", "--metrics", "m.json"], BAD_PARAMS,
        "register", "params.yaml: invalid parameters: train.epochs",
    ),
    "api_service: the old --models-root": (
        [*PY, "api_service", "--models-root", "models"], None, "serve",
        "No such option: --models-root",
    ),
    "api_service: no such port": (
        [*PY, "api_service", "--port", "99999"], None, "serve",
        "Invalid value for '--port': Input should be less than or equal to 65535",
    ),
    "mega serve: no such port": (
        [*MEGA, "serve", "--port", "0"], None, "mega",
        "Invalid value for '--port': Input should be greater than or equal to 1",
    ),
    "api_service: no page in --static-dir": (
        [*PY, "api_service", "--registry", "models", "--static-dir", "nowhere"], None, "serve",
        "--static-dir",
    ),
    "mega: unknown flag": ([*MEGA, "run", "--bogus"], None, "mega", "No such option: --bogus"),
    "mega: bad params.yaml": ([*MEGA, "run"], BAD_PARAMS, "mega", "train.epochs"),
    "mega: missing argument": (
        [*MEGA, "data", "checkout"], None, "mega", "Missing argument 'REV'",
    ),
    "mega: unknown stage": ([*MEGA, "train"], None, "mega", "unknown stage 'train'"),
}  # fmt: skip


@pytest.mark.parametrize("case", USAGE_ERRORS)
def test_usage_errors_exit_2_with_one_prefixed_line(case: str, tmp_path: Path) -> None:
    """Bad flags, a bad params.yaml, a missing input path: exit 2 and one error line."""
    from support import write_params

    argv, params, prog, says = USAGE_ERRORS[case]
    (tmp_path / "afile").write_text("")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw/manifest.jsonl").write_text("")
    if params is None:
        write_params(tmp_path)
    else:
        (tmp_path / "params.yaml").write_text(params)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, (result.stdout, result.stderr)
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{prog}: error: ") and says in line, line
    assert "\x1b[" not in line  # no colour off a terminal


# Every command that reads params.yaml, with the flags it needs besides --params (none of
# them is looked at: params.yaml is read first).
PARAMS_READERS: dict[str, list[str]] = {
    "collect": [*PY, "collector", "--out", "raw"],
    "process": [*PY, "processor", "--raw", "raw", "--out", "out"],
    "train": [*PY, "trainer", "train", "--data", "d", "--out", "c"],
    "optimize": [*PY, "trainer", "optimize", "--model", "m", "--data", "d", "--out", "o",
                 "--report", "r.json"],
    "register": [*PY, "trainer", "register", "--model", "m", "--metrics", "m.json"],
}  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize("prog", PARAMS_READERS)
def test_params_are_read_from_a_gs_uri(prog: str, storage_emulator: str, tmp_path: Path) -> None:
    """`--params gs://…` (as a Vertex AI job gets its staged params.yaml) is read from
    Cloud Storage: the error names that object and its bad key."""
    from common import storage

    uri = f"{storage_emulator}/job/params.yaml"
    storage.write_bytes(uri, BAD_PARAMS.encode())
    argv = [*PARAMS_READERS[prog], "--params", uri]
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, (result.stdout, result.stderr)
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{prog}: error: {uri}: invalid parameters: train.epochs"), line


def test_an_os_error_is_one_line_and_exit_1() -> None:
    """A read or write the system refuses (disk full, permissions): a line, not a traceback."""
    from common.cli import App

    app = App(prog="demo")

    @app.command()
    def run() -> None:
        raise PermissionError(13, "Permission denied", "/data/raw")

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 1
    assert result.stderr == (
        "demo: error: [Errno 13] Permission denied: '/data/raw'; "
        "check the path, its permissions and the free space\n"
    )


def test_the_error_word_is_red_on_a_terminal(tmp_path: Path) -> None:
    import pty

    leader, follower = pty.openpty()
    try:
        result = subprocess.run([*MEGA, "status"], cwd=tmp_path, stderr=follower, timeout=60)
        shown = os.read(leader, 4096).decode()
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode == 2
    assert shown.startswith("mega: \x1b[31m") and "error:\x1b[0m no dvc.yaml in" in shown, shown


@pytest.mark.parametrize(
    ("argv", "prog", "variable"),
    [
        ([*MEGA, "status"], "mega", "MEGA_SERVICE_READ_TIMEOUT"),
        ([*PY, "api_service"], "serve", "MEGA_SERVE_PORT"),
        ([*PY, "trainer", "register", "--model", "m", "--metrics", "m.json"], "register",
         "MEGA_SERVICE_READ_TIMEOUT"),
    ],
    ids=["mega", "api_service", "trainer"],
)  # fmt: skip
def test_a_bad_setting_is_a_usage_error_naming_its_variable(
    argv: list[str], prog: str, variable: str, tmp_path: Path
) -> None:
    from support import write_params

    write_params(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    candidate = tmp_path / "m"  # what register checks before it reads the settings
    candidate.mkdir()
    for name, content in {
        "preprocess.json": {"image_size": 16, "color_mode": "grayscale", "resize": "stretch"},
        "labels.json": ["a", "b"],
        "lineage.json": {"data_hash": "ab" * 32},
    }.items():
        (candidate / name).write_text(json.dumps(content))
    env = {**os.environ, variable: "abc"}
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{prog}: error: {variable}: Input should be a valid "), line
    assert line.endswith("(got 'abc'); fix it in the environment or in .env"), line


def test_a_corrupt_contract_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """A stage file that does not match its contract, met by any CLI: a line naming it."""
    from common.cli import App
    from common.contracts import Metrics

    app = App(prog="demo")

    @app.command()
    def run(path: str) -> None:
        Metrics.read(path)

    path = tmp_path / "metrics.json"
    path.write_text('{"test": {"accuracy": 2}}')
    result = CliRunner().invoke(app, [str(path)])
    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"demo: error: {path}: test.accuracy: "), line
    assert "test.macro_f1: Field required" in line and "re-run" in line, line


@pytest.mark.parametrize(
    ("where", "content"),
    [
        ("data/processed/{dataset}/stats.json", "{not json"),
        ("data/processed/{dataset}/stats.json", '{"dataset": "x"}'),
        ("production", '{"test": {"accuracy": "high"}}'),
    ],
    ids=["stats.json not JSON", "stats.json fields missing", "production metrics.json"],
)
def test_mega_status_names_a_corrupt_stage_file(where: str, content: str, tmp_path: Path) -> None:
    from support import write_params

    from common.params import load_params
    from common.registry import ModelRegistry

    params = load_params(write_params(tmp_path))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    env = {**os.environ, "MEGA_MODELS_ROOT": str(tmp_path / "models")}
    if where == "production":  # what status shows last: the production version's metrics
        # DVC of this interpreter: CI runs .venv/bin/pytest without .venv on PATH.
        dvc_init = [sys.executable, "-m", "dvc", "init", "--no-scm", "-q"]
        subprocess.run(dvc_init, cwd=tmp_path, check=True, env=env)
        candidate = tmp_path / "candidate"
        candidate.mkdir()
        (candidate / "metrics.json").write_text(content)
        registry = ModelRegistry(tmp_path / "models", params.registry.model_name)
        version = registry.publish(candidate)
        registry.set_alias("production", version)
        path = Path(registry.version_uri(version)) / "metrics.json"
    else:
        path = tmp_path / where.format(dataset=params.dataset)
        path.parent.mkdir(parents=True)
        path.write_text(content)
    argv = [*MEGA, "status"]
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 1, (result.stdout, result.stderr)
    [line] = result.stderr.splitlines()
    assert line.startswith(f"mega: error: {path}: "), line


@pytest.mark.parametrize(
    ("broken", "content"),
    [("aliases.json", "garbage"), ("1/version.json", "{"), ("1/metrics.json", "[]")],
)
def test_mega_status_names_a_corrupt_registry_file(
    broken: str, content: str, tmp_path: Path
) -> None:
    """The registry is not a DVC output: its broken files get a fix that is not `mega run`."""
    from support import write_params

    from common.params import load_params
    from common.registry import ModelRegistry

    params = load_params(write_params(tmp_path))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    subprocess.run([*PY, "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    (candidate / "metrics.json").write_text('{"test": {"accuracy": 0.9, "macro_f1": 0.9}}')
    registry = ModelRegistry(tmp_path / "models", params.registry.model_name)
    registry.set_alias("production", registry.publish(candidate))
    path = tmp_path / "models" / params.registry.model_name / broken
    path.write_text(content)
    env = {**os.environ, "MEGA_MODELS_ROOT": str(tmp_path / "models")}
    result = subprocess.run(
        [*MEGA, "status"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    [line] = result.stderr.splitlines()
    assert line.startswith(f"mega: error: {path}: "), line
    assert line.endswith("`mega run` does not rewrite it"), line


@pytest.mark.parametrize("command", ["api_service", "mega serve"])
@pytest.mark.parametrize("case", ["port in use", "unknown host"])
def test_an_address_that_cannot_be_listened_on_is_a_usage_error(
    command: str, case: str, tmp_path: Path
) -> None:
    """Refused before the model loads, in one line (uvicorn alone logged it and exited 3)."""
    import socket

    from support import write_params

    write_params(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    base = [*PY, "api_service"] if command == "api_service" else [*MEGA, "serve"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flags = ["--port", str(port)] if case == "port in use" else ["--host", "999.1.1.1"]
        result = subprocess.run(
            [*base, *flags], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    expected = f"--port {port}: cannot listen" if case == "port in use" else "--host 999.1.1.1: "
    assert line.startswith(f"serve: error: {expected}"), line
