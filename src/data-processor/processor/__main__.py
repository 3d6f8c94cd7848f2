"""`python -m processor`: turn the raw store into TFRecord shards and a data card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from common.cli import App, version_option
from common.params import ParamsError, load_params
from common.services import exit_on_service_error

app = App(help=__doc__)


@app.command()
def run(
    raw: Annotated[str, typer.Option(help="Raw store written by the collector.")],
    out: Annotated[str, typer.Option(help="Output folder or gs:// URI for the shards.")],
    params: Annotated[Path, typer.Option(help="Pipeline parameters file.")] = Path("params.yaml"),
    report_dir: Annotated[
        str | None,
        typer.Option(show_default="no data card", help="Write data_card.md and its chart here."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, show_default="one per core", help="Worker processes.")
    ] = None,
    version: Annotated[bool, version_option("mega-data-processor")] = False,
) -> None:
    """Validate, deduplicate, resize, split and shard RAW into OUT."""
    try:
        pipeline = load_params(params)
    except ParamsError as exc:
        raise typer.BadParameter(str(exc), param_hint="--params") from exc
    from processor.datacard import write_data_card
    from processor.process import ProcessError, process

    try:
        stats = process(
            raw,
            out,
            pipeline.process,
            dataset=pipeline.dataset,
            workers=workers,
            max_pixels=pipeline.collect.max_pixels,
            max_bytes=pipeline.collect.max_bytes,
        )
    except ProcessError as exc:
        typer.secho(f"process: error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    card = write_data_card(stats, report_dir) if report_dir else None
    typer.echo(
        f"process: {stats.examples} examples in {out} ({stats.split_sizes()}; "
        f"{len(stats.rejected)} rejected; data {stats.data_hash[:12]})"
        + (f"; data card {card}" if card else "")
    )


def main() -> None:
    with exit_on_service_error("processor"):
        app()


if __name__ == "__main__":
    main()
