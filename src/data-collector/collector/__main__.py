"""`python -m collector`: collect a source into the raw store (see docs/data.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from pydantic import ValidationError

from collector.base import SourceError
from collector.collect import CollectOptions, collect_source, prune_stale
from collector.progress import CollectProgress, summary
from collector.sources import make_source
from common.cli import App, version_option
from common.params import CollectParams, ParamsError, load_params
from common.services import exit_on_service_error

app = App(help=__doc__)
# The overrides' default: whatever params.yaml's `collect:` section says.
FROM_PARAMS = "params.yaml"
SOURCES = get_args(CollectParams.model_fields["source"].annotation)


def _params(path: Path, overrides: dict[str, Any]) -> CollectParams:
    """params.yaml's `collect:` with the command-line flags on top, validated together."""
    try:
        settings = load_params(path).collect
    except ParamsError as exc:
        raise typer.BadParameter(str(exc), param_hint="--params") from exc
    source = overrides.get("source")
    if source is not None and source not in SOURCES:
        raise typer.BadParameter(
            f"unknown source {source!r}; available: {', '.join(SOURCES)}", param_hint="--source"
        )
    try:
        return CollectParams.model_validate({**settings.model_dump(), **overrides})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'collect'}: {err['msg']}"
            for err in exc.errors()
        )
        raise typer.BadParameter(f"invalid collect settings: {problems}") from exc


@app.command()
def run(
    out: Annotated[str, typer.Option(help="Raw store folder or gs:// URI, e.g. data/raw/digits.")],
    params: Annotated[Path, typer.Option(help="Pipeline parameters file.")] = Path("params.yaml"),
    source: Annotated[
        str | None,
        typer.Option(
            show_default=FROM_PARAMS, help="Override collect.source: " + ", ".join(SOURCES) + "."
        ),
    ] = None,
    uri: Annotated[
        str | None,
        typer.Option(
            show_default=FROM_PARAMS,
            help="Override collect.uri: manifest, archive, folder or gs:// prefix.",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(show_default=FROM_PARAMS, help="Override collect.limit.")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            show_default=FROM_PARAMS, help="Override collect.concurrency (requests in flight)."
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            show_default=FROM_PARAMS, help="Override collect.timeout (seconds per request)."
        ),
    ] = None,
    retries: Annotated[
        int | None, typer.Option(show_default=FROM_PARAMS, help="Override collect.retries.")
    ] = None,
    backoff: Annotated[
        float | None,
        typer.Option(
            show_default=FROM_PARAMS, help="Override collect.backoff (first retry wait, s)."
        ),
    ] = None,
    max_bytes: Annotated[
        int | None, typer.Option(show_default=FROM_PARAMS, help="Override collect.max_bytes.")
    ] = None,
    max_pixels: Annotated[
        int | None, typer.Option(show_default=FROM_PARAMS, help="Override collect.max_pixels.")
    ] = None,
    max_failure_share: Annotated[
        float | None,
        typer.Option(show_default=FROM_PARAMS, help="Override collect.max_failure_share (0-1)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    version: Annotated[bool, version_option("mega-data-collector")] = False,
) -> None:
    """Collect images with labels into OUT/images/<label>/ and write the manifest."""
    flags = {
        "source": source,
        "uri": uri,
        "limit": limit,
        "concurrency": concurrency,
        "timeout": timeout,
        "retries": retries,
        "backoff": backoff,
        "max_bytes": max_bytes,
        "max_pixels": max_pixels,
        "max_failure_share": max_failure_share,
    }
    settings = _params(params, {k: v for k, v in flags.items() if v is not None})
    options = CollectOptions.from_params(settings)
    try:
        chosen = make_source(settings)
        with CollectProgress(f"collect {settings.source}", enabled=progress) as bar:
            result = collect_source(chosen, out=out, options=options, progress=bar)
    except SourceError as exc:
        typer.echo(f"collect: error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for line in summary(result):
        typer.echo(line)
    if result.failure_share > settings.max_failure_share:
        typer.echo(
            f"collect: error: {len(result.failed)} of {result.seen} items failed "
            f"({result.failure_share:.1%}), more than collect.max_failure_share "
            f"{settings.max_failure_share:.1%}. See {result.report} for each item and its "
            "reason; fix the source or raise the threshold.",
            err=True,
        )
        raise typer.Exit(1)
    pruned = prune_stale(result)
    if pruned:
        typer.echo(f"collect: removed {pruned} file(s) no longer in the manifest")


def main() -> None:
    with exit_on_service_error("collector"):
        app()


if __name__ == "__main__":
    main()
