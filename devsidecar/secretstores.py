"""Secret stores read from local JSON files.

File format (chosen for the development sidecar): a JSON object whose keys are
secret names. A secret is either an object of string keys and values, or a
single string, which daprd's local file store would show as `{name: value}`:

    {"db": {"user": "app", "password": "pw"}, "api-key": "abc123"}

The file is read on every call, so it can be edited while the sidecar runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .asgi import ApiError, Request, Response, json_response

_STORE_TYPE = "secretstores.local.file"


class SecretStores:
    def __init__(self, stores: dict[str, str]) -> None:
        self._stores = dict(stores)

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": n, "type": _STORE_TYPE, "version": "v1"} for n in self._stores]

    def get(self, request: Request, store: str, name: str) -> Response:
        return json_response(self.secret(store, name))

    def secret(self, store: str, name: str) -> dict[str, str]:
        """The keys and values of one secret (ApiError as daprd would answer)."""
        secrets = self._load(store)
        if name not in secrets:
            raise ApiError(
                500,
                "ERR_SECRET_GET",
                f"failed getting secret with key {name} from secret store {store}: "
                f"secret {name} not found",
            )
        return secrets[name]

    def bulk(self, request: Request, store: str) -> Response:
        return json_response(self._load(store))

    def _load(self, store: str) -> dict[str, dict[str, str]]:
        if not self._stores:
            raise ApiError(
                500, "ERR_SECRET_STORES_NOT_CONFIGURED", "secret store is not configured"
            )
        path = self._stores.get(store)
        if path is None:
            raise ApiError(
                401, "ERR_SECRET_STORE_NOT_FOUND", f"failed finding secret store with key {store}"
            )
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ApiError(
                500, "ERR_SECRET_GET", f"failed getting secrets from secret store {store}: {exc}"
            ) from None
        if not isinstance(raw, dict):
            raise ApiError(
                500,
                "ERR_SECRET_GET",
                f"failed getting secrets from secret store {store}: not an object",
            )
        out: dict[str, dict[str, str]] = {}
        for name, value in raw.items():
            if isinstance(value, dict):
                out[str(name)] = {str(k): str(v) for k, v in value.items()}
            else:
                out[str(name)] = {str(name): str(value)}
        return out
