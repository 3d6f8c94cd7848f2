"""What every command-line interface of the pipeline shares: help layout, errors, version.

Imported only by the containers' CLIs (`mega` and each `python -m <package>`); `common`
declares Typer and Rich for them.

- `App`: a `typer.Typer` whose help shows a useful metavar (`--raw RAW`, a flag none)
  instead of the Python type (`<str>`, `<bool>`), and whose commands report every
  failure the same way: one line `<prog>: error: <message>` on stderr ("error:" red on
  a terminal only), then exit `EXIT_USAGE` (2: bad flags, a bad params.yaml, a missing
  input given on the command line), `EXIT_FAILURE` (1: the work itself failed) or
  `common.services.EXIT_UNAVAILABLE` (69: an external service). `<prog>` is the stage
  the command runs (`collect`, `train`, ...) or `mega`; `mega` relays a stage's line.
- `fail`, `CliError`, `failures_as`: how a command body ends with such a line;
  `read_params` and `check_output` check params.yaml and output paths before any work.
- `version_option`: an eager `--version` that prints the distribution and its version.
- `console_for`: a Rich console that never wraps or cuts a line when its output is not a
  terminal (piped, or captured in `.mega/logs`), where Rich would assume 80 columns.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

# Typer carries its own copy of Click and exports these two from no public module; the
# version is pinned in the lock, and tests/test_cli_conventions.py fails if they move.
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from common.contracts import ContractError
from common.services import EXIT_UNAVAILABLE, ServiceError

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

    from common.params import PipelineParams

# Exit statuses (sysexits.h-like: scripts and `mega` tell bad input from a failed run).
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: how a shell reports a command stopped by Ctrl-C

# A stage's one-line error (`train: error: …`), as `error_line` writes it.
ERROR_LINE = re.compile(r"^[\w-]+: error: ")

# Output that is not a terminal has no width: lines are as long as they are.
UNBOUNDED_WIDTH = 100_000


class _NamedArgument(TyperArgument):
    """An argument whose help row shows its name (`REV`) without a type label (`<str>`)."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


def _metavar(option: TyperOption) -> str:
    """`--out OUT`, `--strategy [auto|default]`, and nothing after a flag."""
    if option.is_flag or option.count:
        return ""
    choices = option.type_descriptor.choices
    if choices is not None:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in choices) + "]"
    return (option.name or "value").upper()


def _set_metavars(params: list[Any]) -> None:
    for param in params:
        if isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = _metavar(param)
        elif type(param) is TyperArgument:
            # Typer offers no hook for an argument's type label: the subclass only drops it.
            param.__class__ = _NamedArgument
            if param.metavar is None:
                param.metavar = (param.name or "value").upper()  # as docstrings name it


class CliError(Exception):
    """A failure a command reports as one line `<prog>: error: <message>`, exiting `code`.

    `code` is `EXIT_FAILURE` (1) for a run that failed, `EXIT_USAGE` (2) for input that
    was wrong before any work started.
    """

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def fail(message: object, code: int = EXIT_FAILURE) -> NoReturn:
    """End the running command with `<prog>: error: <message>` and exit `code`."""
    raise CliError(str(message), code)


@contextmanager
def failures_as(code: int, *kinds: type[Exception]) -> Iterator[None]:
    """Within: an exception of one of `kinds` ends the command as `fail(exc, code)`.

    For the errors a stage's code raises with a message meant for the user (an
    `InputError`, a `ProcessError`); anything else is a bug and keeps its traceback.
    """
    try:
        yield
    except kinds as exc:
        # A contract's message names the file and fields; its `fix` says what remakes it.
        message = f"{exc}; {exc.fix}" if isinstance(exc, ContractError) else str(exc)
        raise CliError(message, code) from exc


def read_params(path: str | Path) -> PipelineParams:
    """params.yaml at `path` (a local path or gs:// URI), validated; a missing or invalid
    file is a usage error (2)."""
    from common.params import ParamsError, load_params

    try:
        return load_params(path)
    except ParamsError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    except OSError as exc:  # a folder, or a file this user may not read
        raise CliError(
            f"--params {path}: {exc.strerror or exc}; pass the params.yaml file", EXIT_USAGE
        ) from exc


def check_output(flag: str, uri: str, *, file: bool = False, replaced: bool = False) -> None:
    """Before any work: exit 2 unless what a command was told to write at `uri` (given as
    `flag`) can be written there.

    A folder is written in (the default: files go inside it, so an existing folder must
    itself be writable), or, with `replaced`, built beside it and swapped in whole
    (`storage.building`: its parent must be writable); with `file`, a file is written
    atomically in its folder. A path that does not exist yet needs its nearest existing
    parent writable. A `gs://` URI is not checked here (the bucket answers when written);
    a file where a folder is wanted (or a folder where a file is) is refused.
    """
    from common import storage

    if storage.is_gcs(uri):
        return
    path = Path(uri)
    if path.exists() and path.is_dir() == file:
        want, found = ("file", "a folder") if file else ("folder", "a file")
        fail(f"{flag} {uri}: is {found}; pass a {want} path or remove it", EXIT_USAGE)
    written_in = path if path.is_dir() and not replaced else path.parent
    while not written_in.exists():
        written_in = written_in.parent
    if not written_in.is_dir():
        fail(f"{flag} {uri}: {written_in} is a file, not a folder; pass another path", EXIT_USAGE)
    if not os.access(written_in, os.W_OK | os.X_OK):
        fail(
            f"{flag} {uri}: cannot write in {written_in} (permission denied); run as a user who"
            " may write there, or make it yours (in a container: docs/containers.md, Users)",
            EXIT_USAGE,
        )


def error_line(prog: str, message: str) -> None:
    """Write `<prog>: error: <message>` to stderr as one line; "error:" red on a terminal.

    A message of several lines (a YAML parser's, a client's) is joined into one.
    """
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    # click.echo drops the colour when stderr is not a terminal (a pipe, a log file).
    typer.echo(f"{prog}: {typer.style('error:', fg='red', bold=True)} {text}", err=True)


def _settings_problems(exc: ValidationError) -> str:
    """A settings class's validation error as the MEGA_* variables to fix."""
    problems = "; ".join(
        f"MEGA_{'_'.join(str(part) for part in err['loc']).upper()}: {err['msg']} "
        f"(got {err['input']!r})"
        for err in exc.errors()
    )
    return f"{problems}; fix it in the environment or in .env"


@contextmanager
def _reported(prog: str) -> Iterator[None]:
    """Every failure a user can cause or meet, as one `error_line` and its exit status."""
    try:
        yield
    except NoArgsIsHelpError:
        raise  # not an error: the help is shown
    except UsageError as exc:  # bad flags, a missing option, a BadParameter
        where = exc.ctx.command_path if exc.ctx else prog
        error_line(prog, f"{exc.format_message()} (see `{where} --help`)")
        raise typer.Exit(EXIT_USAGE) from None
    except CliError as exc:
        error_line(prog, str(exc))
        raise typer.Exit(exc.code) from None
    except ServiceError as exc:
        error_line(prog, str(exc))
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    except ContractError as exc:  # a stage file the command read does not parse
        error_line(prog, f"{exc}; {exc.fix}")
        raise typer.Exit(EXIT_FAILURE) from None
    except ValidationError as exc:
        if not exc.title.endswith("Settings"):
            raise  # a model of the code's own: a bug, with its traceback
        error_line(prog, _settings_problems(exc))
        raise typer.Exit(EXIT_USAGE) from None
    except BrokenPipeError:
        raise  # the reader went away (`| head`): Typer exits quietly
    except OSError as exc:  # the system refused a read or write: say which, not a traceback
        error_line(prog, f"{exc}; check the path, its permissions and the free space")
        raise typer.Exit(EXIT_FAILURE) from None


class _Conventions:
    """Mixin for Typer's command classes: help names each option's value, not its type,
    and failures are reported as `_reported` says, prefixed with `prog`."""

    params: list[Any]
    prog: str | None = None  # None: the command's own name (trainer's train, evaluate, ...)
    name: str | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _set_metavars(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        _set_metavars([option])
        return option

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: Any = None,
        **extra: Any,
    ) -> Any:
        with _reported(self.prog or self.name or info_name or "error"):  # parsing the flags
            return super().make_context(info_name, args, parent, **extra)  # type: ignore[misc]

    def invoke(self, ctx: Any) -> Any:
        with _reported(self.prog or self.name or ctx.info_name or "error"):
            return super().invoke(ctx)  # type: ignore[misc]


class HelpCommand(_Conventions, TyperCommand):
    """A Typer command with the pipeline's help layout and error convention."""


class HelpGroup(_Conventions, TyperGroup):
    """A Typer group with the same help layout and error convention as `HelpCommand`."""


@functools.cache
def _with_prog(base: type[_Conventions], prog: str | None) -> type[Any]:
    return type(base.__name__, (base,), {"prog": prog})


class App(typer.Typer):
    """`typer.Typer` with the pipeline's help layout and error convention.

    `prog` prefixes every error line of the app's commands. Without it (the trainer, whose
    commands are stages) each command's own name does, and `group` names the errors found
    before a command is chosen (an unknown command).
    """

    def __init__(self, *, prog: str | None = None, group: str | None = None, **kwargs: Any):
        kwargs.setdefault("cls", _with_prog(HelpGroup, prog or group))
        kwargs.setdefault("add_completion", False)
        super().__init__(**kwargs)
        self.prog = prog

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        kwargs.setdefault("cls", _with_prog(HelpCommand, self.prog))
        return super().command(*args, **kwargs)


def version_option(distribution: str) -> Any:
    """A `--version` option (declare it as `bool`, default False) for `distribution`.

    Prints `<distribution> <version>` and exits 0 before any other option is checked.
    """

    def show(value: bool) -> None:
        if value:
            typer.echo(f"{distribution} {metadata.version(distribution)}")
            raise typer.Exit()

    return typer.Option(
        "--version",
        callback=show,
        is_eager=True,
        show_default=False,
        help="Show the version and exit.",
    )


def console_for(stderr: bool = False) -> Console:
    """A Rich console that wraps at the terminal's width, and not at all off a terminal.

    `COLUMNS`, when set, still wins (Rich reads it).
    """
    stream = sys.stderr if stderr else sys.stdout
    unbounded = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=UNBOUNDED_WIDTH if unbounded else None)


def from_setting(field: str, settings: type[BaseSettings] | None = None) -> str:
    """`show_default` text of an option whose default is a setting: `MEGA_SERVE_PORT, else 8000`.

    `settings` is the class declaring `field`: `common.settings.Settings` unless given
    (a container's own subclass, such as `api_service.settings.ServingSettings`).
    """
    from common.settings import Settings

    default = (settings or Settings).model_fields[field].default
    return f"MEGA_{field.upper()}" + ("" if default is None else f", else {default}")
