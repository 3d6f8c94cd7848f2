"""`python -m collector`: collect a source into the raw store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from collector.collect import collect
from collector.digits import iter_digits
from common.params import ParamsError, load_params

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def run(
    out: Annotated[str, typer.Option(help="Raw store folder or gs:// URI, e.g. data/raw/digits.")],
    params: Annotated[Path, typer.Option(help="Pipeline parameters file.")] = Path("params.yaml"),
    source: Annotated[str | None, typer.Option(help="Override collect.source.")] = None,
    limit: Annotated[int | None, typer.Option(help="Override collect.limit.")] = None,
) -> None:
    """Collect images with labels into OUT/images/<label>/ and write the manifest."""
    try:
        settings = load_params(params).collect
    except ParamsError as exc:
        raise typer.BadParameter(str(exc), param_hint="--params") from exc
    source = source or settings.source
    limit = limit if limit is not None else settings.limit
    if source != "digits":
        raise typer.BadParameter(
            f"unknown source {source!r}; available: digits", param_hint="--source"
        )
    result = collect(iter_digits(limit), out=out, source=source)
    typer.echo(
        f"collect: {result.total} items in {out} ({result.written} written, "
        f"{result.already_present} already present, {result.duplicates} duplicates, "
        f"{len(result.failed)} failed)"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
