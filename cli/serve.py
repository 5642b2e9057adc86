"""`persona serve`: your personas over a local OpenAI-compatible HTTP API (the [serve] extra)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from persona_sdk.config import RuntimeConfig

from ._app import app
from ._common import backbone_option, config_option, err


@app.command()
def serve(
    name: Optional[List[str]] = typer.Option(None, "--name", "-n", help="Profile to serve, repeatable "
                                             "(default: every profile in the vault)."),
    bare: bool = typer.Option(False, "--bare", help="Serve only the bare backbone, no profile."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default: only this "
                             "machine can connect)."),
    port: int = typer.Option(8080, "--port", help="TCP port."),
    rows: int = typer.Option(8, "--rows", help="Most replies decoded together in one batch."),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Most tokens one request may ask for."),
    backbone: Optional[Path] = backbone_option(export_ok=True),
    device: str = config_option(RuntimeConfig, "device", "--device"),
    variant: Optional[str] = config_option(RuntimeConfig, "variant", "--variant"),
    threads: Optional[int] = config_option(RuntimeConfig, "threads", "--threads"),
    spin: bool = config_option(RuntimeConfig, "spin", "--spin/--no-spin"),
    new_token: bool = typer.Option(False, "--new-token", help="Replace the bearer token with a new random one."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level (logs never hold message text)."),
) -> None:
    """Serve your personas over a local OpenAI-compatible HTTP API.

    Example: PERSONA_PASSPHRASE=... persona serve --name me --port 8080

    Then, from the same machine (the bearer token is in the file named at start):

      curl -H "Authorization: Bearer $(cat TOKEN_FILE)" http://127.0.0.1:8080/v1/models

    Models: "persona/<name>" for each unlocked profile, "backbone" for the bare
    backbone. POST /v1/chat/completions takes OpenAI chat requests (user and
    assistant turns; "stream": true for server-sent events). Profiles are
    unlocked here, at start (passphrase prompt, PERSONA_PASSPHRASE, or the OS
    keyring), never by a request. Concurrent requests share decode steps.
    """
    try:
        import uvicorn
    except ImportError:
        from persona_sdk.errors import MissingDependencyError
        from persona_sdk.server import INSTALL_SERVE

        raise MissingDependencyError(f"persona serve needs the [serve] extra: {INSTALL_SERVE}") from None
    from persona_sdk.batching import Batcher
    from persona_sdk.engines import open_engine
    from persona_sdk.errors import ConfigError
    from persona_sdk.server import ServeLimits, create_app, ensure_token, model_id, token_path
    from persona_sdk.vault import Vault

    if rows < 1 or rows > 64:
        raise ConfigError(f"--rows must be between 1 and 64, got {rows}")
    limits = ServeLimits(max_tokens=max_tokens, default_max_tokens=min(128, max_tokens))
    engine = open_engine(backbone, RuntimeConfig(device=device, threads=threads, variant=variant, spin=spin),
                         progress=err, build=True)
    vault = Vault()
    names = [] if bare else (list(dict.fromkeys(name)) if name else vault.list())
    personas = {n: vault.load(n, _passphrase(n), fingerprint=engine.fingerprint) for n in names}
    token = ensure_token(rotate=new_token)
    batcher = Batcher(engine, max_rows=rows, capacity=512)
    served = create_app(batcher, personas, token, limits)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err(f"Warning: listening on {host}: other machines that can reach it may connect (with the token).")
    err(f"Serving {', '.join(model_id(n) for n in [None, *personas])} at http://{host}:{port}/v1 "
        f"({engine.device}, up to {rows} replies per batch).")
    err(f"Bearer token: in {token_path()} (owner-only). Ctrl-C stops.")
    import logging

    logging.basicConfig(level=log_level.upper() if log_level.upper() in logging._nameToLevel else logging.INFO,
                        format="%(levelname)s:     %(name)s: %(message)s")
    try:
        uvicorn.run(served, host=host, port=port, log_level=log_level, access_log=log_level in ("debug", "trace"))
    finally:
        batcher.close()


def _passphrase(name: str) -> Optional[str]:
    """PERSONA_PASSPHRASE, else a hidden prompt — only for passphrase-mode profiles."""
    from persona_sdk import vault

    value = os.environ.get("PERSONA_PASSPHRASE")
    if value or not vault.needs_passphrase(name):
        return value or None
    from ._common import prompt_passphrase

    return prompt_passphrase("PERSONA_PASSPHRASE", confirm=False, label=f"Passphrase for {name}")
