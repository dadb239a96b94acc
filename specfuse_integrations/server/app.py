"""The FastAPI app behind ``specfuse serve``: OpenAI-compatible routes, metrics and the fusion page.

Fusion itself stays in :mod:`specfuse_core`: every request becomes one ``Ensemble.astream`` call,
run in its own task so that a client that goes away (or a shutdown) cancels it and its member
sessions are closed, whatever the HTTP layer is doing at that moment.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from specfuse_core import Ensemble, FusionResult, SegmentEvent
from specfuse_core.errors import ConfigError, SpecFuseValueError
from specfuse_core.scheduler import describe
from specfuse_core.tools import TOOL_OPTIONS

from . import protocol
from .metrics import ServerMetrics
from .protocol import APIError

log = logging.getLogger("specfuse.server")

DEFAULT_MODEL_NAME = "specfuse"
DEFAULT_MAX_CONCURRENT = 8
DEFAULT_MAX_QUEUE = 32
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
DRAIN_BYTES = 64 * 1024 * 1024
ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/chat/completions")

EnsembleSource = Ensemble | Callable[[], Ensemble]


class _Admission:
    """At most ``limit`` requests answered at once, ``queue`` more waiting; beyond that a 429."""

    def __init__(self, limit: int, queue: int, metrics: ServerMetrics) -> None:
        self.limit, self.queue = limit, queue
        self.running = self.waiting = 0
        self._slots = asyncio.Semaphore(limit)
        self._metrics = metrics

    def reserve(self) -> None:
        """Claim a place synchronously (so that simultaneous arrivals are counted), or refuse."""
        if self.running + self.waiting >= self.limit + self.queue:
            self._metrics.rejected.inc()
            raise APIError(429, f"the server is at capacity ({self.limit} running, {self.queue} queued); retry later",
                           code="rate_limit_exceeded")  # fmt: skip
        self.waiting += 1
        self._metrics.queued.set(self.waiting)

    async def enter(self) -> None:
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
            self._metrics.queued.set(self.waiting)
        self.running += 1
        self._metrics.running.set(self.running)

    def leave(self) -> None:
        self.running -= 1
        self._metrics.running.set(self.running)
        self._slots.release()


class _Run:
    """One request's fusion, in its own task; segments and the result come out of ``queue``."""

    def __init__(self, state: _State, stream: Any, arrival: float) -> None:
        self.state = state
        self.stream = stream
        self.arrival = arrival
        self.queue: asyncio.Queue[SegmentEvent | BaseException] = asyncio.Queue()
        self.result: FusionResult | None = None
        self.task = asyncio.get_running_loop().create_task(self._produce())
        state.runs.add(self.task)
        self.task.add_done_callback(state.runs.discard)

    async def _produce(self) -> None:
        metrics = self.state.metrics
        admitted = False
        try:
            await self.state.admission.enter()
            admitted = True
            metrics.queue_wait.observe(time.perf_counter() - self.arrival)
            async for event in self.stream:
                if event.round == 1:
                    metrics.first_segment.observe(time.perf_counter() - self.arrival)
                metrics.segment(event)
                if event.result is not None:
                    self.result = event.result
                    metrics.finished(event.result, event.result.token_usage.prompt_tokens,
                                     time.perf_counter() - self.arrival)  # fmt: skip
                self.queue.put_nowait(event)
        except asyncio.CancelledError:
            metrics.requests.labels("cancelled").inc()
            raise
        except Exception as error:  # reported to the client; the server keeps serving
            log.warning("request failed: %s: %s", type(error).__name__, error)
            metrics.requests.labels("error").inc()
            self.queue.put_nowait(error)
        finally:
            await self.stream.aclose()
            if admitted:
                self.state.admission.leave()

    def cancel(self) -> None:
        if not self.task.done():
            self.task.cancel()

    async def wait(self, request: Request) -> FusionResult:
        """The result of a non-streaming request; a client that hangs up cancels it."""
        try:
            while not self.task.done():
                done, _ = await asyncio.wait({self.task}, timeout=0.25)
                if not done and await request.is_disconnected():
                    raise APIError(499, "client closed the request")
        finally:
            self.cancel()
        if self.result is None:
            error = self.queue.get_nowait() if not self.queue.empty() else None
            while not isinstance(error, BaseException) and not self.queue.empty():
                error = self.queue.get_nowait()
            raise _engine_error(error)
        return self.result


def _bad_request(error: SpecFuseValueError) -> APIError:
    """A 400 with the error's own OpenAI code and field (``context_length_exceeded``, ...) where it has one."""
    param = getattr(error, "param", None) or _param_of(error)
    return APIError(400, str(error), param=param, code=getattr(error, "code", None))


def _engine_error(error: Any) -> APIError:
    if isinstance(error, SpecFuseValueError):
        return _bad_request(error)
    name = type(error).__name__ if error is not None else "Error"
    return APIError(500, f"the ensemble failed: {name}: {error}")


def _param_of(error: SpecFuseValueError) -> str | None:
    """The request field an engine error is about: the field its message starts with, else messages."""
    word = re.split(r"[^A-Za-z_]", str(error), maxsplit=1)[0]
    if word in TOOL_OPTIONS:
        return word
    if isinstance(error, ConfigError):
        return word if word.isidentifier() else None
    return "messages"


class _State:
    def __init__(
        self,
        source: EnsembleSource,
        *,
        api_key: str | None,
        model_name: str,
        max_concurrent: int,
        max_queue: int,
        max_body_bytes: int,
        on_fatal: Callable[[BaseException], None] | None,
    ) -> None:
        self.source = source
        self.ensemble: Ensemble | None = source if isinstance(source, Ensemble) else None
        self.load_error: BaseException | None = None
        self._key = api_key.encode("utf-8") if api_key else None
        self.model_name = model_name
        self.max_body_bytes = max_body_bytes
        self.on_fatal = on_fatal
        self.metrics = ServerMetrics(open_sessions=self._open_sessions)
        self.admission = _Admission(max_concurrent, max_queue, self.metrics)
        self.runs: set[asyncio.Task[None]] = set()
        self.started = protocol.now()
        self.draining = False

    def _open_sessions(self) -> float:
        value = getattr(self.ensemble, "open_sessions", None)
        return float(value) if isinstance(value, int) else float("nan")

    def authorize(self, request: Request) -> None:
        if self._key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
        given = token.strip().encode("utf-8") if scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(given, self._key):
            raise APIError(401, "invalid API key", code="invalid_api_key")

    def ready(self) -> Ensemble:
        if self.draining:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        if self.ensemble is None:
            if self.load_error is not None:
                raise APIError(503, f"the members failed to load: {type(self.load_error).__name__}", code="load_failed")
            raise APIError(503, "the members are still loading; retry shortly", code="loading")
        return self.ensemble

    def model_ids(self, ensemble: Ensemble) -> tuple[str, ...]:
        return (self.model_name, ensemble.name)

    async def load(self) -> None:
        if self.ensemble is not None:
            self.metrics.loaded.set(1)
            return
        start = time.perf_counter()
        try:
            self.ensemble = await asyncio.to_thread(self.source)  # type: ignore[arg-type]
        except Exception as error:
            self.load_error = error
            log.error("loading the members failed: %s: %s", type(error).__name__, error)
            if self.on_fatal is not None:
                self.on_fatal(error)
            return
        self.metrics.loaded.set(1)
        log.info("members loaded in %.1f s: %s", time.perf_counter() - start, ", ".join(m.name for m in self.ensemble.members))
        log.info("schedule %s: %s", self.ensemble.schedule, describe(self.ensemble.placements))

    async def drain(self, timeout: float) -> None:
        """Cancel what is still running (uvicorn already waited its graceful period) and wait for the caches."""
        self.draining = True
        for task in list(self.runs):
            task.cancel()
        if self.runs:
            await asyncio.wait(set(self.runs), timeout=timeout)


def create_app(
    ensemble: EnsembleSource,
    *,
    api_key: str | None = None,
    model_name: str = DEFAULT_MODEL_NAME,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    shutdown_timeout: float = 10.0,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The ASGI app. ``ensemble`` is an :class:`Ensemble`, or a function that builds one: it then runs
    in a thread at start-up while the server already answers (``503`` until it is done). At shutdown,
    requests still running are cancelled and get ``shutdown_timeout`` seconds to free their sessions."""
    if max_concurrent < 1 or max_queue < 0:
        raise ConfigError("max_concurrent must be >= 1 and max_queue >= 0")
    state = _State(ensemble, api_key=api_key, model_name=model_name, max_concurrent=max_concurrent,
                   max_queue=max_queue, max_body_bytes=max_body_bytes, on_fatal=on_fatal)  # fmt: skip
    loading: list[asyncio.Task[None]] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading.append(asyncio.create_task(state.load()))
        yield
        await state.drain(timeout=shutdown_timeout)

    app = FastAPI(title="specfuse", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.specfuse = state
    _install_error_handlers(app)
    app.add_middleware(_CountRequests, metrics=state.metrics)  # type: ignore[arg-type]

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page_html(), headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.ensemble is not None and not state.draining:
            return JSONResponse({"status": "ok", "model": state.model_name, "running": state.admission.running,
                                 "queued": state.admission.waiting})  # fmt: skip
        status = "shutting_down" if state.draining else "failed" if state.load_error else "loading"
        return JSONResponse({"status": status}, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        state.authorize(request)
        ensemble = state.ready()
        return JSONResponse(protocol.model_list(state.model_name, [m.name for m in ensemble.members], state.started))

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> JSONResponse:
        state.authorize(request)
        ensemble = state.ready()
        if model_id not in state.model_ids(ensemble):
            raise APIError(404, f"the model {model_id!r} does not exist; this server serves {state.model_name!r}",
                           param="model", code="model_not_found")  # fmt: skip
        return JSONResponse(protocol.model_list(model_id, [m.name for m in ensemble.members], state.started)["data"][0])

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        arrival = time.perf_counter()
        state.authorize(request)
        body = protocol.parse_body(await _read_body(request, state.max_body_bytes))
        ensemble = state.ready()
        req = protocol.to_engine_request(body)
        if req.model not in state.model_ids(ensemble):
            raise APIError(404, f"the model {req.model!r} does not exist; this server serves {state.model_name!r}",
                           param="model", code="model_not_found")  # fmt: skip
        _check_budget(ensemble, req.overrides.get("max_tokens"))
        try:
            stream = ensemble.astream(req.messages, **req.overrides, **req.tools)
            await stream.check()  # limits and context windows: a 400 before the request waits or works
        except SpecFuseValueError as error:
            raise _bad_request(error) from None
        state.admission.reserve()
        run = _Run(state, stream, arrival)
        ids = (protocol.new_completion_id(), protocol.now(), req.model)
        if req.stream:
            return StreamingResponse(_events(run, ids, req.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
        result = await run.wait(request)
        return JSONResponse(protocol.completion(*ids, result))

    return app


async def _events(run: _Run, ids: tuple[str, int, str], include_usage: bool) -> AsyncIterator[bytes]:
    """One SSE chunk per accepted segment, then usage (if asked) and ``[DONE]``."""
    first = True
    try:
        while True:
            item = await run.queue.get()
            if isinstance(item, BaseException):
                yield protocol.sse(_engine_error(item).body())
                return
            event, result = item, item.result
            summary = result.summary() if result is not None else None
            yield protocol.sse(protocol.chunk(*ids, event, first=first, summary=summary))
            first = False
            if result is not None:
                if include_usage:
                    yield protocol.sse(protocol.usage_chunk(*ids, result))
                yield protocol.sse("[DONE]")
                return
    finally:
        run.cancel()  # a client that went away (or a shutdown) stops the fusion and frees its caches


def _check_budget(ensemble: Ensemble, max_tokens: int | None) -> None:
    window = ensemble.context_window
    if max_tokens is not None and window is not None and max_tokens > window:
        raise APIError(400, f"max_tokens={max_tokens} exceeds the ensemble's context window of {window} tokens",
                       param="max_tokens", code="context_length_exceeded")  # fmt: skip


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or a 413 once it passes ``limit``. An oversized body is still read (and dropped) up to
    :data:`DRAIN_BYTES`, so that the client, still sending, receives the 413 instead of a reset."""
    chunks: list[bytes] = []
    size = 0
    async for piece in request.stream():
        size += len(piece)
        if size <= limit:
            chunks.append(piece)
        elif size > max(DRAIN_BYTES, limit):
            break
    if size > limit:
        raise APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    return b"".join(chunks)


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, APIError)
        return JSONResponse(error.body(), status_code=error.status, headers=_close_if_unread(error))

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        message = {404: "no such route", 405: "method not allowed"}.get(error.status_code, str(error.detail))
        return JSONResponse(protocol.error_body(error.status_code, f"{message}: {request.method} {request.url.path}"),
                            status_code=error.status_code)  # fmt: skip

    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(protocol.error_body(500, f"internal error: {type(error).__name__}"), status_code=500)

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def _close_if_unread(error: APIError) -> dict[str, str]:
    # A 413 answered before the whole body was read: close the connection rather than read the rest.
    return {"Connection": "close"} if error.status == 413 else {}


class _CountRequests:
    """ASGI middleware: ``specfuse_http_requests_total{route, status}`` (streams are not wrapped)."""

    def __init__(self, app: Callable[..., Awaitable[None]], metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in ROUTES else "/v1/models/{id}" if path.startswith("/v1/models/") else "other"

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.metrics.http.labels(route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


_PAGE: str | None = None


def _page_html() -> str:
    global _PAGE
    if _PAGE is None:
        _PAGE = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    return _PAGE


def serve(
    ensemble: EnsembleSource,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    shutdown_timeout: float = 10.0,
    log_level: str = "info",
    **app_options: Any,
) -> int:
    """Run the server until SIGTERM or Ctrl-C; returns the exit status (0, or 1 if loading failed).

    On SIGTERM uvicorn stops accepting connections, lets in-flight requests finish for up to
    ``shutdown_timeout`` seconds, then cancels the rest (their member sessions are closed).
    """
    import signal

    import uvicorn

    server: uvicorn.Server | None = None

    def fatal(error: BaseException) -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(ensemble, on_fatal=fatal, shutdown_timeout=shutdown_timeout, **app_options)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=shutdown_timeout,
                            lifespan="on", server_header=False)  # fmt: skip
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it caught once it has shut down; a no-op handler makes that a clean exit 0.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 1 if app.state.specfuse.load_error is not None else 0
