"""`python -m api_service`: serve the registered model over HTTP."""

from __future__ import annotations

import gc
import logging
import socket
import sys
from typing import Annotated

import typer

from api_service.settings import ServingSettings, get_settings
from common import cli
from common.cli import EXIT_USAGE, App, fail, version_option

app = App(prog="serve", help=__doc__)

SWITCH_INTERVAL_S = 0.0005


def from_setting(field: str) -> str:
    """`show_default` text of an option whose default is a serving setting."""
    return cli.from_setting(field, ServingSettings)


def check_listenable(host: str, port: int) -> None:
    """Before the model loads: exit 2 with one line unless HOST:PORT can be listened on.

    uvicorn would find out only after the start-up, log it and exit 3.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        fail(
            f"--host {host}: {exc.strerror}; pass an address of this machine "
            "(127.0.0.1, or 0.0.0.0 for every interface)",
            EXIT_USAGE,
        )
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            fail(
                f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}); "
                "pass another --port (or MEGA_SERVE_PORT), or stop what listens there",
                EXIT_USAGE,
            )


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(show_default=from_setting("serve_host"), help="Bind address.")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, show_default=from_setting("serve_port"), help="Port."),
    ] = None,
    registry: Annotated[
        str | None,
        typer.Option(
            show_default=from_setting("models_root"), help="Registry root folder or gs:// URI."
        ),
    ] = None,
    model_name: Annotated[
        str | None, typer.Option(show_default=from_setting("model_name"), help="Model name.")
    ] = None,
    alias: Annotated[
        str | None,
        typer.Option(show_default=from_setting("model_alias"), help="Alias or version."),
    ] = None,
    static_dir: Annotated[
        str | None,
        typer.Option(
            show_default=from_setting("static_dir"), help="Serve this folder's page at /."
        ),
    ] = None,
    version: Annotated[bool, version_option("mega-api-service")] = False,
) -> None:
    """Start the API (and the page, with --static-dir) on HOST:PORT."""
    import uvicorn

    from api_service.app import create_app
    from api_service.logs import configure_logging, exit_at_sigterm, stop_logging

    overrides = {
        "serve_host": host,
        "serve_port": port,
        "models_root": registry,
        "model_name": model_name,
        "model_alias": alias,
        "static_dir": static_dir,
    }
    settings = get_settings().model_copy(
        update={k: v for k, v in overrides.items() if v is not None}
    )
    check_listenable(settings.serve_host, settings.serve_port)
    configure_logging(logging.INFO)
    exit_at_sigterm()
    try:  # from here on, whatever ends the process writes the log out first
        # The log thread wakes for short moments; it must take the GIL from a busy
        # event loop, which by default hands it over only every 5 ms.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        try:
            application = create_app(settings)
        except FileNotFoundError as exc:
            raise typer.BadParameter(str(exc), param_hint="--static-dir") from exc
        # Everything built so far (modules, the app, its routes and schemas) lives as
        # long as the process. Frozen, the cyclic collector stops scanning it: its full
        # passes over those objects were the service's worst latency spikes (p99 about
        # 40 ms under load, about 10 ms frozen; benchmarks/serve.py).
        gc.collect()
        gc.freeze()
        # Our middleware writes the structured access log; uvicorn's would duplicate it.
        uvicorn.run(
            application,
            host=settings.serve_host,
            port=settings.serve_port,
            log_level="info",
            log_config=None,
            access_log=False,
        )
    finally:
        stop_logging()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
