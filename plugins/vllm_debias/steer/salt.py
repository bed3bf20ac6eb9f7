"""Server-side prefix-cache safety: every steered HTTP request gets a ``cache_salt`` derived from its setting.

vLLM keys KV-cache blocks by token ids and the request's ``cache_salt`` (hashed into the first block, and block
hashes chain), so a steered request never reuses a plain request's blocks, or another setting's, and never
leaves blocks a plain request could reuse. The client need not (and cannot forget to) send the salt:
``debias-lm serve --steer`` loads :class:`SteerSaltMiddleware` (vLLM's ``--middleware``), which rewrites the JSON
body of ``/v1/completions``, ``/v1/chat/completions`` and ``/v1/responses`` when ``vllm_xargs`` opts into
``steer``: ``cache_salt = debias_lm.methods.steer.vllm.cache_salt(setting, client's salt)``. A body it cannot
parse, or whose steer arguments are invalid, passes unchanged (admission answers 400).
"""

from __future__ import annotations

import json

from debias_lm.methods.steer.vllm import cache_salt

PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/responses")


def request_salt(xargs, user_salt=None):
    """The salt for a request's ``vllm_xargs`` (``user_salt`` unchanged when it does not steer or is invalid)."""
    from ..args import DebiasArgsError, parse

    try:
        spec = parse(xargs, steer=True)
    except (DebiasArgsError, TypeError):
        return user_salt
    if spec is None or spec.behaviour != "activation":
        return user_salt
    return cache_salt(spec.steer, user_salt)


class SteerSaltMiddleware:
    """ASGI middleware (``--middleware vllm_debias.steer.salt.SteerSaltMiddleware``)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in PATHS:
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message.get("type") != "http.request":  # client went away: let the app see it
                return await self.app(scope, _replay(b"".join(chunks), receive, message), send)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("vllm_xargs"), dict):
            user = data.get("cache_salt")
            salt = request_salt(data["vllm_xargs"], user if isinstance(user, str) else None)
            if salt is not None and salt != user:
                data["cache_salt"] = salt
                body = json.dumps(data).encode()
                headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
                scope = dict(scope, headers=[*headers, (b"content-length", str(len(body)).encode())])
        return await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive, pending=None):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if pending is not None:
            return pending
        return await receive()

    return replay
