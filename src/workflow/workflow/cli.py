"""`mega`: the one command for the whole pipeline."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from common.params import ParamsError
from common.settings import get_settings
from workflow.project import Project, ProjectError
from workflow.runner import log_tail, repro

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Mega Pipeline: collect → process → train → evaluate → register → serve.",
)
console = Console()
errors = Console(stderr=True)


def _project() -> Project:
    try:
        project = Project.here(get_settings())
        _ = project.params  # validate early: a bad params.yaml fails before any work
    except (ProjectError, ParamsError) as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    return project


def _run_stages(targets: list[str], force: bool = False) -> None:
    project = _project()
    stages = project.stages()
    if targets:
        unknown = [t for t in targets if t not in stages]
        if unknown:
            console.print(
                f"[red]error:[/red] unknown stage {unknown[0]!r}; stages: {', '.join(stages)}"
            )
            raise typer.Exit(2)
        # dvc runs a target's upstream stages too; count just those for the bar.
        stages = stages[: max(stages.index(t) for t in targets) + 1]
    result = repro(project.root, stages, targets, console, force=force)
    if result.returncode != 0:
        console.print(
            f"[red]pipeline failed[/red] (dvc exit code {result.returncode}); last lines:"
        )
        if result.log_path:
            console.print(log_tail(result.log_path), markup=False, highlight=False)
            console.print(f"full log: {result.log_path.relative_to(project.root)}")
        raise typer.Exit(1)
    if result.ran:
        console.print(f"ran: {', '.join(result.ran)}")
    if result.skipped:
        console.print(f"up to date, skipped: {', '.join(result.skipped)}")
    _summary(project)


def _summary(project: Project) -> None:
    table = Table(title="Mega Pipeline", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    stats = project.data_stats()
    if stats:
        totals = stats["totals"]
        table.add_row(
            "data",
            f"{project.processed_dir.relative_to(project.root)} · "
            f"version {stats['data_hash'][:12]} · "
            f"train {totals['train']} / val {totals['val']} / test {totals['test']}",
        )
    metrics = project.metrics()
    if metrics:
        test = metrics["test"]
        table.add_row(
            "test metrics",
            f"accuracy {test['accuracy']:.4f} · macro F1 {test['macro_f1']:.4f} "
            f"· {test['examples']} examples ({project.metrics_path.relative_to(project.root)})",
        )
    production = project.production()
    if production:
        table.add_row(
            "production model",
            f"{production['name']} version {production['version']} · {production['uri']}",
        )
    else:
        table.add_row("production model", "none yet (no candidate passed the gate)")
    table.add_row("next", "make serve  →  http://127.0.0.1:8000")
    console.print(table)


@app.command()
def run(
    force: Annotated[
        bool, typer.Option(help="Re-run every stage even if nothing changed.")
    ] = False,
) -> None:
    """Run the whole pipeline locally with DVC; stages whose inputs are unchanged are skipped."""
    _run_stages([], force=force)


def _stage_command(stage: str, doc: str) -> None:
    def command(
        force: Annotated[
            bool, typer.Option(help="Re-run this stage even if nothing changed.")
        ] = False,
    ) -> None:
        _run_stages([stage], force=force)

    command.__doc__ = doc
    app.command(name=stage)(command)


_stage_command("collect", "Collect the raw data set (stage 1).")
_stage_command("process", "Process raw data into TFRecord shards (stage 2, after its inputs).")
_stage_command("train", "Train the candidate model (stage 3, after its inputs).")
_stage_command("evaluate", "Evaluate the candidate on the test split (stage 4, after its inputs).")
_stage_command("register", "Publish the candidate and promote it if it passes the gate (stage 5).")


@app.command()
def status() -> None:
    """Show the data version, which stages are out of date, and the production model."""
    project = _project()
    stats = project.data_stats()
    console.print(
        f"[bold]data[/bold]: version {stats['data_hash'][:12]}, {sum(stats['totals'].values())} "
        f"examples in {project.processed_dir.relative_to(project.root)}"
        if stats
        else "[bold]data[/bold]: not processed yet (run `mega run`)"
    )
    try:
        stale = project.stale_stages()
    except ProjectError as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    for stage in project.stages():
        state = "[yellow]changed[/yellow]" if stage in stale else "[green]up to date[/green]"
        console.print(f"  {stage:<10} {state}")
    production = project.production()
    if production is None:
        console.print("[bold]production model[/bold]: none (run `mega run`)")
        return
    test = production["metrics"].get("test", {})
    console.print(
        f"[bold]production model[/bold]: {production['name']} version {production['version']} "
        f"({production['uri']}), test accuracy {test.get('accuracy', float('nan')):.4f}"
    )


@app.command()
def serve(
    port: Annotated[int | None, typer.Option(help="Port [MEGA_SERVE_PORT, default 8000].")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address [MEGA_SERVE_HOST].")] = None,
) -> None:
    """Serve the production model's API and the web page on one port."""
    project = _project()
    settings = get_settings()
    static = project.root / "src" / "frontend" / "public"
    command = [
        sys.executable,
        "-m",
        "api_service",
        "--host",
        host or settings.serve_host,
        "--port",
        str(port or settings.serve_port),
        "--model-name",
        project.params.registry.model_name,
        "--static-dir",
        str(static),
    ]
    console.print(f"serving on http://{host or settings.serve_host}:{port or settings.serve_port}")
    sys.stdout.flush()
    os.execv(sys.executable, command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
