"""Where the client connects and with which token."""

from __future__ import annotations

import os

from ._version import __version__

DEFAULT_SERVER = "http://127.0.0.1:7700"
SERVER_VARIABLE = "TASKHOST_SERVER"
TOKEN_VARIABLE = "TASKHOST_TOKEN"


def base_url(given: str | None) -> str:
    """``given``, else ``$TASKHOST_SERVER``, else the server's default
    address."""
    return given or os.environ.get(SERVER_VARIABLE) or DEFAULT_SERVER


def headers(token: str | None, tenant: str | None) -> dict[str, str]:
    """The headers of every request: the token (``token``, else
    ``$TASKHOST_TOKEN``; none if neither is set, for the routes that need
    none) and the tenant an admin token acts in."""
    out = {"user-agent": f"taskhost-python/{__version__}"}
    token = token or os.environ.get(TOKEN_VARIABLE)
    if token:
        out["authorization"] = f"Bearer {token}"
    if tenant:
        out["taskhost-tenant"] = tenant
    return out
