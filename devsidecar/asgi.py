"""The raw ASGI seam: types, a parsed request, responses and daprd-shaped errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from worker.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send"]  # re-exported for the package

JSON_TYPE = b"application/json"


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, body already read."""

    method: str
    path: str
    query: dict[str, str]
    raw_query: bytes
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON; a `ApiError` 400 like daprd when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise ApiError(
                400, "ERR_MALFORMED_REQUEST", f"failed deserializing HTTP body: {exc}"
            ) from None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class ApiError(Exception):
    """An answer in daprd's error shape: `{"errorCode": ..., "message": ...}`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> Response:
        body = json.dumps({"errorCode": self.code, "message": self.message}).encode()
        return Response(self.status, body, [(b"content-type", JSON_TYPE)])


def json_response(value: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(value).encode(), [(b"content-type", JSON_TYPE)])


def empty(status: int = 204) -> Response:
    return Response(status)


async def read_request(scope: Scope, receive: Receive) -> Request:
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    raw_query: bytes = scope.get("query_string", b"")
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    return Request(
        method=scope["method"],
        path=scope["path"],
        query=dict(parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True)),
        raw_query=raw_query,
        headers=headers,
        body=b"".join(chunks),
    )


async def send_response(send: Send, response: Response) -> None:
    headers = [*response.headers, (b"content-length", str(len(response.body)).encode())]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def drop_connection(send: Send) -> None:
    """Make the server close the connection with no usable answer.

    Raising before `http.response.start` would make uvicorn answer 500, so the
    head of a response is sent with a body length that never arrives and the
    app returns: uvicorn closes the transport and the client sees a protocol
    error, as it would if the sidecar died mid-call.
    """
    headers = [(b"content-length", b"1")]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
