"""``recall serve`` (the HTTP API, DESIGN.md section 8) and ``recall tokens new``."""

from __future__ import annotations

import socket
from pathlib import Path

import click

from config.settings import get_settings, mask_url
from worker.cli.common import CommandError, read_rules, rules_option, use_rules_file


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--ssl-certfile",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Serve HTTPS with this certificate (PEM) and --ssl-keyfile.",
)
@click.option(
    "--ssl-keyfile",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The certificate's private key (PEM).",
)
@click.option(
    "--forwarded-allow-ips",
    metavar="IPS",
    help="Behind a TLS proxy: the proxy addresses (comma-separated, or *) whose"
    " X-Forwarded-For/-Proto headers are trusted.",
)
@rules_option
def serve(
    host: str,
    port: int,
    ssl_certfile: Path | None,
    ssl_keyfile: Path | None,
    forwarded_allow_ips: str | None,
    rules_path: Path | None,
) -> None:
    """Run the HTTP API (JSON, described at /openapi.json) and the console (/console) on HOST:PORT.

    Every request but GET /healthz needs `Authorization: Bearer <token>`, a token of the file
    RECALL_API_TOKENS names (see `recall tokens new`). On the embedded default (no
    RECALL_BROKER_URL and RECALL_DATABASE_URL) it may be left unset: RECALL_HOME/api-tokens.toml
    is used, made on first start with an editor token `admin` printed once. Elsewhere the
    service refuses to start without it, and the database must be at the latest migration.

    The console's sessions need RECALL_SECRET_KEY (32 characters or more, the same in every
    process): on the embedded default one is made under RECALL_HOME if unset; elsewhere the
    service refuses to start without it.
    """
    import uvicorn

    from worker.api.app import create_app, tokens_path
    from worker.api.tokens import TokensError, ensure_embedded_tokens, load_tokens
    from worker.cli.services import ready_database
    from worker.console.secret import SecretKeyError, secret_key
    from worker.store.database import DatabaseNotReady, database_url

    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise click.UsageError("--ssl-certfile and --ssl-keyfile go together")
    use_rules_file(rules_path)
    settings = get_settings()
    read_rules(settings.rules_path)
    try:  # authentication first: the service never runs without it
        path = tokens_path(settings)
        if settings.api_tokens is not None or path.exists():  # else made below (embedded)
            load_tokens(path)
        if not settings.embedded:  # the embedded default makes its own below
            secret_key(settings)
    except (TokensError, SecretKeyError) as error:
        raise CommandError(str(error)) from None
    ready_database(migrate=settings.embedded)
    try:
        if settings.api_tokens is None:  # the embedded default
            path, token = ensure_embedded_tokens(settings.ready_home())
            if token is not None:
                click.echo(f"recall serve: API token of `admin` (editor): {token}", err=True)
                click.echo(
                    "recall serve: shown this once; its hash is kept in"
                    f" {path} (add tokens with `recall tokens new`)",
                    err=True,
                )
        app = create_app(settings)
    except (TokensError, SecretKeyError, DatabaseNotReady) as error:
        raise CommandError(str(error)) from None
    try:
        sock = socket.create_server((host, port), family=_family(host), reuse_port=False)
    except OSError as error:
        raise CommandError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    scheme = "https" if ssl_certfile else "http"
    bound = sock.getsockname()[1]
    click.echo(
        f"recall serve: {scheme}://{host}:{bound}, database {mask_url(database_url(settings))},"
        f" tokens {path}",
        err=True,
    )
    config = uvicorn.Config(
        app,
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
        server_header=False,
        log_level="info",
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except OSError as error:  # e.g. an unreadable certificate
        raise CommandError(f"cannot serve: {error}") from None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@click.group()
def tokens() -> None:
    """API tokens for `recall serve`: make a new one (its hash goes in RECALL_API_TOKENS)."""


@tokens.command("new")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["dialer", "viewer", "editor"]),
    required=True,
    help="dialer: phones, claims, decide; viewer: read everything; editor: also change rules"
    " and replay dead letters.",
)
def tokens_new(name: str, role: str) -> None:
    """Print a fresh token NAME, once, and the [[token]] entry to add to the tokens file.

    The file keeps only the token's SHA-256: this is the only time the token is shown. Nothing
    is written: add the entry to the file RECALL_API_TOKENS names, and restart the service.
    """
    from worker.api.tokens import TokensError, check_name, new_token, token_entry

    try:
        check_name(name)
    except TokensError as error:
        raise CommandError(str(error)) from None
    token = new_token()
    click.echo(f"token: {token}")
    click.echo("# add to the tokens file (RECALL_API_TOKENS):")
    click.echo(token_entry(name, role, token), nl=False)
