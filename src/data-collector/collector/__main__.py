"""`python -m collector`: collect a source into the raw store (see docs/data.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from collector.base import SourceError
from collector.collect import CollectOptions, collect_source, prune_stale
from collector.progress import CollectProgress, summary
from collector.sources import make_source
from common.cli import (
    EXIT_USAGE,
    App,
    check_output,
    fail,
    failures_as,
    read_params,
    version_option,
)

app = App(prog="collect", help=__doc__)


@app.command()
def run(
    out: Annotated[str, typer.Option(help="Raw store folder or gs:// URI, e.g. data/raw/digits.")],
    params: Annotated[
        str,
        typer.Option(
            help="Pipeline parameters file or gs:// URI; its collect: section says what to read."
        ),
    ] = "params.yaml",
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    version: Annotated[bool, version_option("mega-data-collector")] = False,
) -> None:
    """Collect images with labels into OUT/images/<label>/ and write the manifest."""
    settings = read_params(params).collect
    check_output("--out", out)
    options = CollectOptions.from_params(settings)
    with failures_as(EXIT_USAGE, SourceError):  # the source params.yaml names is unusable
        chosen = make_source(settings)
        with CollectProgress(f"collect {settings.source}", enabled=progress) as bar:
            result = collect_source(chosen, out=out, options=options, progress=bar)
    for line in summary(result):
        typer.echo(line)
    if result.failure_share > settings.max_failure_share:
        fail(
            f"{len(result.failed)} of {result.seen} items failed "
            f"({result.failure_share:.1%}), more than collect.max_failure_share "
            f"{settings.max_failure_share:.1%}. See {result.report} for each item and its "
            "reason; fix the source or raise the threshold."
        )
    pruned = prune_stale(result)
    if pruned:
        typer.echo(f"collect: removed {pruned} file(s) no longer in the manifest")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
