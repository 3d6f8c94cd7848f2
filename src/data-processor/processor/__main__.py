"""`python -m processor`: turn the raw store into TFRecord shards and a data card."""

from __future__ import annotations

from typing import Annotated

import typer

from common import cli, storage
from common.contracts import MANIFEST

app = cli.App(prog="process", help=__doc__)


@app.command()
def run(
    raw: Annotated[str, typer.Option(help="Raw store written by the collector.")],
    out: Annotated[str, typer.Option(help="Output folder or gs:// URI for the shards.")],
    params: Annotated[
        str, typer.Option(help="Pipeline parameters file or gs:// URI.")
    ] = "params.yaml",
    report_dir: Annotated[
        str | None,
        typer.Option(show_default="no data card", help="Write data_card.md and its chart here."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, show_default="one per core", help="Worker processes.")
    ] = None,
    version: Annotated[bool, cli.version_option("mega-data-processor")] = False,
) -> None:
    """Validate, deduplicate, resize, split and shard RAW into OUT."""
    pipeline = cli.read_params(params)
    if not storage.exists(storage.join(raw, MANIFEST)):
        cli.fail(
            f"--raw {raw}: no {MANIFEST} there; pass the raw store the collect stage wrote "
            "(data/raw/<dataset>), or run the collect stage first",
            cli.EXIT_USAGE,
        )
    cli.check_output("--out", out, replaced=True)
    if report_dir:
        cli.check_output("--report-dir", report_dir)
    from processor.datacard import write_data_card
    from processor.process import ProcessError, process

    with cli.failures_as(cli.EXIT_FAILURE, ProcessError):
        stats = process(
            raw,
            out,
            pipeline.process,
            dataset=pipeline.dataset,
            workers=workers,
            max_pixels=pipeline.collect.max_pixels,
            max_bytes=pipeline.collect.max_bytes,
        )
    card = write_data_card(stats, report_dir) if report_dir else None
    typer.echo(
        f"process: {stats.examples} examples in {out} ({stats.split_sizes()}; "
        f"{len(stats.rejected)} rejected; data {stats.data_hash[:12]})"
        + (f"; data card {card}" if card else "")
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
