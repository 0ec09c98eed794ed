"""Auth adapters for HTTP clients: ``Authorization: Bearer`` from the worker fleet.

``requests.get(url, auth=TokenAuth(token_client, credential="orders"))``,
``httpx.Client(auth=TokenAuth(...))`` and ``httpx.AsyncClient(auth=AsyncTokenAuth(
async_token_client, ...))``. They live with the requester
(:mod:`token_worker.client.auth`, where the behaviour is described); this module is their
public name.
"""

from __future__ import annotations

from token_worker.client.auth import AsyncTokenAuth, TokenAuth

__all__ = ["AsyncTokenAuth", "TokenAuth"]
