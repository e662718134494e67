"""`receiver serve`: the webhook service and its read API."""

from __future__ import annotations

import logging
from typing import Any

import click

from receiver.cli.options import all_settings, check_database
from receiver.cli.server import (
    is_loopback,
    listen_socket,
    raise_open_file_limit,
    run_server,
    url_host,
)
from receiver.settings import Settings
from receiver.store.backend import shown_db

log = logging.getLogger("receiver")


@click.command()
@all_settings
def serve(**options: Any) -> None:
    """Run the webhook service (uvicorn, one worker, and a writer process for the database).

    Point the PBX at http://HOST:PORT/webhook?myid=<extension id>.

    \b
    Examples:
      receiver serve --db receiver.db --port 8000
      RECEIVER_HOST=0.0.0.0 RECEIVER_TOKEN=s3cret RECEIVER_API_TOKEN=t0ken receiver serve
    """
    from receiver.logs import configure_logging
    from receiver.web.app import create_app
    from receiver.web.protocol import deadline_protocol

    try:
        settings = Settings(**options)
    except ValueError as problem:
        raise click.BadParameter(str(problem)) from None
    check_database(settings.db, create=True)
    sock = listen_socket(
        settings.host,
        settings.port,
        host_hint="--host or RECEIVER_HOST",
        port_hint="--port or RECEIVER_PORT",
    )
    configure_logging(settings.log_level, settings.log_format)
    if not is_loopback(settings.host):
        if not (settings.token or settings.tokens):
            log.warning(
                "listening on %s with no webhook token: anyone who finds the URL can add events "
                "(set --token or RECEIVER_TOKEN)",
                settings.host,
            )
        if not settings.api_token:
            log.warning(
                "listening on %s with no API token: anyone can read the events "
                "(set --api-token or RECEIVER_API_TOKEN)",
                settings.host,
            )
    raise_open_file_limit()
    base = f"http://{url_host(settings.host)}:{settings.port}"
    token = "&token=<your token>" if settings.token or settings.tokens else ""
    log.info("database %s", shown_db(settings.db))
    log.info(
        "listening on %s: register %s/webhook?myid=<extension id>%s with the PBX",
        base,
        base,
        token,
    )
    app = create_app(settings)
    run_server(
        app,
        sock,
        on_shutdown=app.feed.close,
        http=deadline_protocol(settings.header_timeout),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=30,
    )
