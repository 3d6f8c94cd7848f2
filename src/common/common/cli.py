"""What every command-line interface of the pipeline shares: help layout, version, console.

Imported only by the containers' CLIs (`mega` and each `python -m <package>`), which all
depend on Typer (and so on Rich); `common` itself does not declare them.

- `App`: a `typer.Typer` whose help shows a useful metavar (`--raw RAW`, a flag none)
  instead of the Python type (`<str>`, `<bool>`).
- `version_option`: an eager `--version` that prints the distribution and its version.
- `console_for`: a Rich console that never wraps or cuts a line when its output is not a
  terminal (piped, or captured in `.mega/logs`), where Rich would assume 80 columns.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from importlib import metadata
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

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


class _NamedValues:
    """Mixin for Typer's command classes: help names each option's value, not its type."""

    params: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _set_metavars(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        _set_metavars([option])
        return option


class HelpCommand(_NamedValues, TyperCommand):
    """A Typer command whose help names each option's value instead of its Python type."""


class HelpGroup(_NamedValues, TyperGroup):
    """A Typer group with the same help layout as `HelpCommand`."""


class App(typer.Typer):
    """`typer.Typer` with the pipeline's help layout for the app and each of its commands."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", HelpGroup)
        kwargs.setdefault("add_completion", False)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        kwargs.setdefault("cls", HelpCommand)
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
