"""HTTP requests to API Gateway REST proxy events and back, served by the Lambda handler."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Invoke = Callable[[dict[str, Any]], Any]


def to_event(
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes,
    client: str,
    *,
    authorizer: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The API Gateway REST proxy event for one HTTP request (``target`` may carry a query string).

    ``authorizer`` and ``identity`` fill the request context as API Gateway's authorizers would.
    """
    url = urlsplit(target)
    query = parse_qs(url.query, keep_blank_values=True)
    text, encoded = _body_text(body)
    return {
        "resource": url.path,
        "path": url.path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
        "multiValueQueryStringParameters": query or None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "requestId": request_id or str(uuid.uuid4()),
            "stage": "local",
            "httpMethod": method,
            "path": url.path,
            "resourcePath": url.path,
            "identity": {"sourceIp": client, **(identity or {})},
            "authorizer": authorizer or {},
        },
        "body": text,
        "isBase64Encoded": encoded,
    }


def _body_text(body: bytes) -> tuple[str | None, bool]:
    """The event's body and whether it is base64: bytes that are not UTF-8 travel encoded, as API
    Gateway sends a binary body (the handler answers them 400, never reads them as something else)."""
    if not body:
        return None, False
    try:
        return body.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), True


def make_server(host: str, port: int, invoke: Invoke) -> ThreadingHTTPServer:
    """A threaded HTTP server whose every request is one handler invocation."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "flux-control-local"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            # As API Gateway: a body labelled as a form (`curl -d` without a Content-Type) is a 415.
            headers = {k.lower(): v for k, v in self.headers.items()}
            response = invoke(to_event(self.command, self.path, headers, body, self.client_address[0]))
            payload = response.get("body") or ""
            data = base64.b64decode(payload) if response.get("isBase64Encoded") else str(payload).encode()
            self.send_response(int(response.get("statusCode", 500)))
            # A REST proxy answer may carry headers in both maps (Set-Cookie only in the second).
            multi = response.get("multiValueHeaders") or {}
            for name, value in (response.get("headers") or {}).items():
                if name not in multi:
                    self.send_header(name, str(value))
            for name, values in multi.items():
                for value in values:
                    self.send_header(name, str(value))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the handler logs each request as JSON already

    return ThreadingHTTPServer((host, port), Handler)
