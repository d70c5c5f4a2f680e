"""Where the client connects and with which token."""

from __future__ import annotations

import os

from ._version import __version__

DEFAULT_SERVER = "http://127.0.0.1:7700"
SERVER_VARIABLE = "TASKHOST_SERVER"
TOKEN_VARIABLE = "TASKHOST_TOKEN"
TENANT_VARIABLE = "TASKHOST_TENANT"


def base_url(given: str | None) -> str:
    """``given``, else ``$TASKHOST_SERVER``, else the server's default
    address."""
    return given or os.environ.get(SERVER_VARIABLE) or DEFAULT_SERVER


def headers(token: str | None, tenant: str | None) -> dict[str, str]:
    """The headers of every request: the token (``token``, else
    ``$TASKHOST_TOKEN``; none if neither is set, or ``token`` is ``""``, for
    the routes that need none) and the tenant an admin token acts in
    (``tenant``, else ``$TASKHOST_TENANT``; ``""`` for the token's own), as
    the CLI and the TypeScript client read them."""
    out = {"user-agent": f"taskhost-python/{__version__}"}
    token = os.environ.get(TOKEN_VARIABLE) if token is None else token
    if token:
        out["authorization"] = f"Bearer {token}"
    tenant = os.environ.get(TENANT_VARIABLE) if tenant is None else tenant
    if tenant:
        out["taskhost-tenant"] = tenant
    return out
