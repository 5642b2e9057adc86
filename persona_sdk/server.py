"""An OpenAI-compatible local HTTP server over the batcher (the ``[serve]`` extra: Starlette + uvicorn).

Endpoints (every request needs ``Authorization: Bearer <token>``)::

    GET  /v1/models             one model per unlocked profile ("persona/<name>") plus "backbone"
    POST /v1/chat/completions   OpenAI chat completions; "stream": true sends server-sent events

Every request is decoded in a row of one :class:`~persona_sdk.batching.Batcher`,
so concurrent clients (and different personas) share decode steps. The app
holds decrypted personas in memory only; it never unlocks a profile because
a request asked (``persona serve`` unlocks them at start). Bad requests get
a 4xx JSON error in OpenAI's shape (``{"error": {"message", "type", "code"}}``),
never a traceback. A client that disconnects cancels its reply and frees its
row. Logs carry counts, ids and timings, never message text.

Message roles: ``user`` and ``assistant`` (the conversation so far, ending
with the user's turn). A ``system`` message is refused: the persona is
the system prompt, and personas were trained without one.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import GenerationConfig
from .conversation import ASSISTANT, USER, Turn
from .errors import BatcherBusyError, ConfigError, GenerationError, MissingDependencyError

if TYPE_CHECKING:  # pragma: no cover
    from .batching import Batcher
    from .prefix import Prefix

log = logging.getLogger(__name__)

BACKBONE_MODEL = "backbone"
PROFILE_PREFIX = "persona/"
INSTALL_SERVE = 'pip install "persona-sdk[serve]"'


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for."""

    max_body_bytes: int = 256 * 1024  # the whole JSON request
    max_messages: int = 512
    max_tokens: int = 512  # most tokens one reply may ask for
    default_max_tokens: int = 128

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_messages", "max_tokens", "default_max_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        if self.default_max_tokens > self.max_tokens:
            raise ConfigError("default_max_tokens must be <= max_tokens")


def model_id(name: str | None) -> str:
    """The model id clients use for profile ``name`` (None: the bare backbone)."""
    return BACKBONE_MODEL if name is None else PROFILE_PREFIX + name


class RequestError(Exception):
    """A client error, answered as a 4xx JSON body (never raised to the caller of the app)."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind


def create_app(batcher: "Batcher", personas: dict[str, "Prefix"], token: str,
               limits: ServeLimits | None = None, generation: GenerationConfig | None = None):
    """The ASGI app serving ``personas`` (name -> decrypted prefix) and the bare backbone."""
    try:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route
    except ImportError:
        raise MissingDependencyError(f"persona serve needs the [serve] extra: {INSTALL_SERVE}") from None
    if not isinstance(token, str) or len(token) < 16:
        raise ConfigError("the bearer token must be a string of at least 16 characters")
    limits = limits or ServeLimits()
    defaults = generation or GenerationConfig()
    engine = batcher.engine
    models: dict[str, "Prefix | None"] = {model_id(None): None}
    models.update({model_id(name): prefix for name, prefix in personas.items()})
    created = int(time.time())

    def error(exc: RequestError) -> JSONResponse:
        body = {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}}
        return JSONResponse(body, status_code=exc.status)

    async def list_models(request: Request) -> JSONResponse:
        data = [{"id": mid, "object": "model", "created": created, "owned_by": "persona"} for mid in models]
        return JSONResponse({"object": "list", "data": data})

    async def chat_completions(request: Request):
        started = time.perf_counter()
        try:
            body = await _read_json(request, limits.max_body_bytes)
            name, prefix, turns, gen, stream = _parse_chat(body, models, limits, defaults)
            ids = engine.prompt_ids(turns, prefix, gen)
            try:
                reply = batcher.submit(ids, prefix, gen, loop=asyncio.get_running_loop())
            except BatcherBusyError as exc:
                raise RequestError(429, str(exc), "busy", kind="rate_limit_error") from None
            except GenerationError as exc:
                raise RequestError(400, str(exc), "invalid_prompt") from None
        except RequestError as exc:
            log.info("chat request refused: %s (%d)", exc.code, exc.status)
            return error(exc)
        rid = "chatcmpl-" + secrets.token_hex(12)
        log.info("%s: model %s, %d prompt tokens, max %d new", rid, name, len(ids), gen.max_new_tokens)
        if stream:
            return StreamingResponse(_sse(reply, rid, name, ids, gen, started), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            text = await _collect(request, reply, gen)
        except GenerationError:
            log.error("%s: decoding failed", rid)
            return error(RequestError(500, "decoding failed on the server", "decode_failed", kind="server_error"))
        if text is None:  # the client went away
            return JSONResponse({}, status_code=499)
        _log_done(rid, reply, started)
        return JSONResponse({
            "id": rid, "object": "chat.completion", "created": int(time.time()), "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": _finish(reply)}],
            "usage": _usage(ids, reply),
        })

    async def _collect(request: Request, reply, gen: GenerationConfig) -> str | None:
        """The whole reply text, or None when the client disconnects first (the reply is cancelled)."""
        from .runtime import TextStream

        text = TextStream(engine.format, gen.stop)
        pieces: list[str] = []

        async def run() -> None:
            async for token in reply:
                pieces.append(text.push(token))
                if text.stopped:
                    reply.cancel()
                    break
            pieces.append(text.finish())

        task = asyncio.ensure_future(run())
        try:
            while not task.done():
                done, _ = await asyncio.wait({task}, timeout=0.25)
                if not done and await request.is_disconnected():
                    task.cancel()
                    reply.cancel()
                    return None
            task.result()
        finally:
            reply.cancel()
        return "".join(pieces)

    async def _sse(reply, rid: str, name: str, ids: list[int], gen: GenerationConfig, started: float):
        from .runtime import TextStream

        text = TextStream(engine.format, gen.stop)

        def chunk(delta: dict, finish: str | None = None) -> str:
            body = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            try:
                async for token in reply:
                    piece = text.push(token)
                    if piece:
                        yield chunk({"content": piece})
                    if text.stopped:
                        reply.cancel()
                        break
            except GenerationError:
                log.error("%s: decoding failed", rid)
                failure = {"message": "decoding failed on the server", "type": "server_error", "param": None,
                           "code": "decode_failed"}
                yield f"data: {json.dumps({'error': failure})}\n\n"
                return
            piece = text.finish()
            if piece:
                yield chunk({"content": piece})
            yield chunk({}, _finish(reply, text.stopped))
            yield "data: [DONE]\n\n"
            _log_done(rid, reply, started)
        finally:
            if not reply.done:
                log.info("%s: client gone, reply cancelled after %d tokens", rid, reply.times.tokens)
            reply.cancel()

    async def not_found(request: Request) -> JSONResponse:
        return error(RequestError(404, f"no endpoint {request.method} {request.url.path}", "not_found"))

    routes = [Route("/v1/models", list_models, methods=["GET"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])]
    app = Starlette(routes=routes)
    app.state.batcher = batcher
    app.state.models = list(models)
    return _BearerAuth(app, token)


class _BearerAuth:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <token>`` (else 401)."""

    def __init__(self, app, token: str) -> None:
        self.app = app
        self.state = app.state
        self._token = token.encode("utf-8")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, given = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
                body = json.dumps({"error": {"message": "missing or wrong bearer token", "type": "authentication_error",
                                             "param": None, "code": "invalid_api_key"}}).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


# --- parsing -------------------------------------------------------------------------
async def _read_json(request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request body is larger than {limit} bytes", "body_too_large")
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > limit:
            raise RequestError(413, f"the request body is larger than {limit} bytes", "body_too_large")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RequestError(400, "the request body is not valid JSON", "invalid_json") from None


def _parse_chat(body: Any, models: dict, limits: ServeLimits, defaults: GenerationConfig):
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object", "invalid_body")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise RequestError(400, "'model' is required (see GET /v1/models)", "missing_model", "model")
    if name not in models:
        raise RequestError(404, f"model {name!r} is not served here (see GET /v1/models)", "model_not_found", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", "invalid_messages", "messages")
    if len(messages) > limits.max_messages:
        raise RequestError(400, f"at most {limits.max_messages} messages", "too_many_messages", "messages")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestError(400, f"messages[{i}] must be an object", "invalid_messages", f"messages[{i}]")
        role = m.get("role")
        if role in ("system", "developer"):
            raise RequestError(400, f"messages[{i}]: {role} messages are not supported (the persona speaks for "
                                    "itself); send user and assistant turns", "unsupported_role", f"messages[{i}]")
        if role not in (USER, ASSISTANT):
            raise RequestError(400, f"messages[{i}].role must be 'user' or 'assistant'", "invalid_role",
                               f"messages[{i}].role")
        turns.append(Turn(role, _content(m.get("content"), i)))
    if turns[-1].role != USER:
        raise RequestError(400, "the last message must be the user's", "invalid_messages", "messages")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be true or false", "invalid_stream", "stream")
    n = body.get("n", 1)
    if n != 1:
        raise RequestError(400, "only n=1 is supported", "invalid_n", "n")
    gen = _generation(body, limits, defaults)
    return name, models[name], turns, gen, stream


def _content(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise RequestError(400, f"messages[{i}].content: only text parts are supported", "invalid_content",
                                   f"messages[{i}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError(400, f"messages[{i}].content must be a string", "invalid_content", f"messages[{i}].content")


def _number(body: dict, key: str, kind: type, lo: float, hi: float):
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise RequestError(400, f"'{key}' must be a {'number' if kind is float else 'whole number'}",
                           "invalid_" + key, key)
    if not lo <= value <= hi:
        raise RequestError(400, f"'{key}' must be between {lo} and {hi}", "invalid_" + key, key)
    return kind(value)


def _generation(body: dict, limits: ServeLimits, defaults: GenerationConfig) -> GenerationConfig:
    changes: dict[str, Any] = {}
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RequestError(400, f"'{key}' must be a whole number >= 1", "invalid_" + key, key)
            if value > limits.max_tokens:
                raise RequestError(400, f"'{key}' must be <= {limits.max_tokens} on this server", "too_many_tokens",
                                   key)
            changes["max_new_tokens"] = value
            break
    else:
        changes["max_new_tokens"] = min(defaults.max_new_tokens, limits.max_tokens, limits.default_max_tokens)
    temperature = _number(body, "temperature", float, 0.0, 2.0)
    if temperature is not None:
        changes["temperature"] = temperature
        changes["do_sample"] = temperature > 0
    top_p = _number(body, "top_p", float, 1e-6, 1.0)
    if top_p is not None:
        changes["top_p"] = top_p
    top_k = _number(body, "top_k", int, 0, 100_000)
    if top_k is not None:
        changes["top_k"] = top_k
    penalty = _number(body, "repetition_penalty", float, 1.0, 10.0)
    if penalty is not None:
        changes["repetition_penalty"] = penalty
    seed = _number(body, "seed", int, 0, 2**63 - 1)
    if seed is not None:
        changes["seed"] = seed
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and len(s) <= 64 for s in stops):
            raise RequestError(400, "'stop' must be a string or a list of at most 4 strings", "invalid_stop", "stop")
        changes["stop"] = tuple(stops)
    try:
        return defaults.replace(**changes)
    except ConfigError as exc:
        raise RequestError(400, str(exc), "invalid_settings") from None


def _finish(reply, stopped_by_string: bool = False) -> str:
    if stopped_by_string or reply.finish_reason in ("stop", "cancelled"):
        return "stop"
    return "length"


def _usage(ids: list[int], reply) -> dict:
    return {"prompt_tokens": len(ids), "completion_tokens": reply.times.tokens,
            "total_tokens": len(ids) + reply.times.tokens}


def _log_done(rid: str, reply, started: float) -> None:
    times = reply.times
    ttft = f"{times.ttft:.3f}s" if times.ttft is not None else "-"
    log.info("%s: %d tokens, finish %s, ttft %s, total %.3fs", rid, times.tokens, reply.finish_reason, ttft,
             time.perf_counter() - started)


# --- the bearer token ------------------------------------------------------------------
TOKEN_FILE = "serve-token"


def token_path() -> Path:
    """Where ``persona serve`` keeps its bearer token (the user's data folder, 0600)."""
    from . import paths

    return paths.data_dir() / TOKEN_FILE


def ensure_token(path: Path | None = None, rotate: bool = False) -> str:
    """The server's bearer token: read from ``path``, or a new random one written there 0600.

    A token file that others can read (group/other permission bits) is
    replaced by a new token, as is any token when ``rotate``.
    """
    import os
    import stat
    from pathlib import Path

    path = Path(path) if path is not None else token_path()
    if not rotate and path.is_file():
        st = path.stat()
        if not st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and st.st_size < 1024:
            value = path.read_text(encoding="ascii", errors="replace").strip()
            if len(value) >= 32 and value.isascii() and value.replace("-", "").replace("_", "").isalnum():
                return value
        log.warning("the token file %s was readable by others or malformed: writing a new token", path)
    value = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (value + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return value
