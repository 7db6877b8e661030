"""The HTTP routes (Starlette). Every status code a route can answer is listed in README
("Serve: HTTP API"); tests/test_serve_api.py checks each one.

Safety: uploads are bounded before they are read (Content-Length, then counted while streaming);
a request names results by the ids the server issued and never a file; the page's assets are
served from memory by exact name; mark, teach, switch and moving the threshold need the bearer token and are off (403)
without one; a server on a loopback address answers only Host headers naming that address (a web
page elsewhere cannot reach it through DNS rebinding).
"""

from __future__ import annotations

import contextlib
import hmac
import re
import time
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..images import MAX_BYTES_ENV, ImageOverLimit, ImageReadError, decode_image
from ..line.records import Item, Outcome, record
from ..line.products import UnknownProduct
from .batcher import Batcher, QueueFull
from .operator import ActionRefused
from .options import LOOPBACK_NAMES, is_loopback
from .service import Job, Service, image_suffix

MULTIPART_SLACK = 64 << 10  # bytes a multipart body may carry beyond the image (boundaries, headers)
ID = "{rid:str}"
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"), "/static/app.js": ("app.js", "text/javascript"),
          "/static/app.css": ("app.css", "text/css")}
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"}


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


def clean_name(name: str | None) -> str | None:
    """An upload's name as a label only (records, error text): its last path part, printable, short."""
    if not name:
        return None
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(c for c in name if c.isprintable())[:120].strip()
    return name or None


def error_record(name: str, message: str, bundle_id: str) -> dict[str, Any]:
    """What ``predict`` prints for an input it could not score."""
    return record(Outcome(Item(name), verdict="error", error=message), bundle_id)


async def read_upload(request: Request, max_bytes: int) -> tuple[str, bytes]:
    """The image of a /v1/predict request: the raw body, or the first file of a multipart form.
    Refused (413) from its Content-Length before a byte is read, or as soon as it passes the cap."""
    ctype = request.headers.get("content-type", "").lower()
    multipart = ctype.startswith("multipart/form-data")
    cap = max_bytes + MULTIPART_SLACK if multipart else max_bytes
    name = clean_name(request.query_params.get("name")) or "upload"
    over = f"over the {max_bytes}-byte limit per image (${MAX_BYTES_ENV})"
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HTTPError(400, f"Content-Length {length[:40]!r} is not a number")
        if int(length) > cap:
            raise HTTPError(413, f"{name}: {int(length)} bytes is {over}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise HTTPError(413, f"{name}: {over}")
    if not multipart:
        return name, bytes(body)

    async def one_chunk():
        yield bytes(body)

    try:
        form = await MultiPartParser(request.headers, one_chunk(), max_files=1, max_fields=8,
                                     max_part_size=MULTIPART_SLACK).parse()
    except MultiPartException as e:
        raise HTTPError(400, f"malformed multipart form ({e.message})") from None
    try:
        upload = next((v for _, v in form.multi_items() if isinstance(v, UploadFile)), None)
        if upload is None:
            raise HTTPError(400, "the multipart form holds no file part (send the image as a file field)")
        name = clean_name(upload.filename) or name
        data = await upload.read()
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise HTTPError(413, f"{name}: {len(data)} bytes is {over}")
    return name, data


def build_app(service: Service) -> Starlette:
    opts = service.opts
    batcher = Batcher(service.score_jobs, opts.max_batch, opts.max_wait_ms / 1000.0, opts.max_queue,
                      on_batch=service.metrics.batch.observe)
    static = resources.files(__package__) / "static"
    assets = {path: (static.joinpath(fname).read_bytes(), media) for path, (fname, media) in ASSETS.items()}

    def bundle_id() -> str:
        return service.predictor.bundle.bundle_id

    def authorise(request: Request) -> None:
        if not opts.actions_enabled:
            raise HTTPError(403, "actions are off: this server was started without --token")
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), opts.token.encode()):
            raise HTTPError(401, "missing or wrong bearer token", {"WWW-Authenticate": 'Bearer realm="patchcore-rt"'})

    def result_of(request: Request):
        res = service.store.get(request.path_params["rid"])
        if res is None:
            raise HTTPError(404, f"no result {request.path_params['rid'][:40]!r} (ids come from this server and "
                            f"only the latest {opts.keep_results} are kept)")
        return res

    async def asset(request: Request) -> Response:
        data, media = assets[request.url.path]
        return Response(data, media_type=media, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

    async def predict(request: Request) -> Response:
        t0 = time.perf_counter()
        overlay = request.query_params.get("overlay", "0").lower() in ("1", "true", "yes")
        name = clean_name(request.query_params.get("name")) or "upload"
        try:
            product = service.products.resolve(request.query_params.get("product"))
        except UnknownProduct as e:  # never a guess: refused before the body is read
            service.metrics.errors.labels("unknown_product").inc()
            rec = error_record(name, f"{name}: {e}", None)
            rec["product"] = request.query_params.get("product")
            return JSONResponse(rec, 404)
        if batcher.depth >= opts.max_queue:  # refused before its body costs memory
            service.metrics.errors.labels("queue_full").inc()
            raise HTTPError(503, f"{batcher.depth} requests are waiting (--max-queue {opts.max_queue}); try again "
                            "shortly", {"Retry-After": "1"})
        try:
            name, data = await read_upload(request, opts.limits.max_bytes)
        except HTTPError as e:
            service.metrics.errors.labels("over_limit" if e.status == 413 else "bad_request").inc()
            if e.status == 413:
                return JSONResponse(error_record(name, str(e), bundle_id()), 413)
            raise

        def decode() -> tuple[Any, float]:
            t = time.perf_counter()
            return decode_image(data, name, opts.limits), time.perf_counter() - t

        try:
            image, seconds = await run_in_threadpool(decode)
        except ImageReadError as e:
            over = isinstance(e, ImageOverLimit)
            service.metrics.errors.labels("over_limit" if over else "not_an_image").inc()
            return JSONResponse(error_record(name, str(e), bundle_id()), 413 if over else 422)
        job = Job(Item(name, image=image, decode_s=seconds), overlay, data, image_suffix(name), product)
        del image
        try:
            outcome, res = await batcher.submit(job)
        except QueueFull as e:
            service.metrics.errors.labels("queue_full").inc()
            raise HTTPError(503, str(e), {"Retry-After": "1"}) from None
        service.metrics.latency.observe(time.perf_counter() - t0)
        body = dict(res.record, id=res.id)
        if overlay and res.overlay_png is not None:
            body["overlay"] = f"/v1/results/{res.id}/overlay.png"
        if outcome.error:
            service.metrics.errors.labels("unusable_image").inc()
            return JSONResponse(body, 422)
        return JSONResponse(body)

    async def results(request: Request) -> Response:
        after = request.query_params.get("after", "0")
        if not after.isdigit():
            raise HTTPError(400, "after must be a result sequence number (>= 0)")
        items = service.store.since(int(after))
        return JSONResponse({"results": [r.summary() for r in items],
                             "last": items[-1].seq if items else int(after)})

    async def one_result(request: Request) -> Response:
        res = result_of(request)
        return JSONResponse(dict(res.summary(), record=res.record))

    async def thumb(request: Request) -> Response:
        data = await run_in_threadpool(service.store.thumb, result_of(request))
        if not data:
            raise HTTPError(404, "this result has no overlay (it could not be scored, or its file is gone)")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    async def overlay_png(request: Request) -> Response:
        data = await run_in_threadpool(service.store.overlay, result_of(request))
        if not data:
            raise HTTPError(404, "this result has no overlay (ask /v1/predict with ?overlay=1)")
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def mark(request: Request) -> Response:
        authorise(request)
        res = result_of(request)
        await run_in_threadpool(service.operator.mark, res, request.method == "POST")
        return JSONResponse(dict(res.summary(), marked_total=len(service.store.marked())))

    async def review(request: Request) -> Response:
        authorise(request)
        res = result_of(request)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("review"), str):
            raise HTTPError(400, 'the body must be JSON like {"review": "confirm" | "good" | "ng", "reviewer": "name"}')
        reviewer = body.get("reviewer") or request.headers.get("x-reviewer") or ""
        if not isinstance(reviewer, str):
            raise HTTPError(400, "reviewer must be a name (text)")
        r = await run_in_threadpool(service.review, res, body["review"], reviewer)
        return JSONResponse(dict(r, marked_total=len(service.store.marked())))

    async def reviews(request: Request) -> Response:
        after = request.query_params.get("after", "0")
        if not after.isdigit():
            raise HTTPError(400, "after must be a review sequence number (>= 0)")
        items = service.reviews.since(int(after))
        return JSONResponse({"reviews": items, "last": items[-1]["seq"] if items else int(after)})

    async def teach(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(service.operator.job.view())
        authorise(request)
        job = service.operator.teach()
        return JSONResponse(job.view(), 202)

    async def switch(request: Request) -> Response:
        authorise(request)
        expected = None
        if await request.body():
            try:
                expected = (await request.json()).get("bundle")
            except (ValueError, AttributeError):
                raise HTTPError(400, 'the body must be JSON like {"bundle": "<taught bundle id>"}, or empty') from None
        before = bundle_id()
        new = await run_in_threadpool(service.operator.switch, expected)
        return JSONResponse({"bundle": new.bundle.bundle_id, "previous": before, "path": new.bundle.root.name,
                             "lineage": service.status()["lineage"]})

    async def roll_back(request: Request) -> Response:
        authorise(request)
        before = bundle_id()
        new = await run_in_threadpool(service.operator.roll_back)
        return JSONResponse({"bundle": new.bundle.bundle_id, "previous": before, "path": new.bundle.root.name,
                             "lineage": service.status()["lineage"]})

    async def threshold(request: Request) -> Response:
        if request.method == "GET":
            try:
                view = await run_in_threadpool(service.threshold_view, request.query_params.get("policy"))
            except ValueError as e:  # a bad policy, or one the evidence cannot apply (UsageError)
                raise HTTPError(400, str(e)) from None
            return JSONResponse(view)
        authorise(request)
        try:
            policy = (await request.json()).get("policy")
        except (ValueError, AttributeError):
            policy = None
        if not isinstance(policy, str):
            raise HTTPError(400, 'the body must be JSON like {"policy": "false-calls=2%"}')
        before = bundle_id()
        made, new = await run_in_threadpool(service.operator.move_threshold, policy)
        return JSONResponse({"bundle": new.bundle.bundle_id, "previous": before, "path": new.bundle.root.name,
                             "threshold": made.entry["threshold"], "expected": made.summary()["expected"],
                             "lineage": service.status()["lineage"]})

    async def bundle(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(service.bundle_info))

    async def status(request: Request) -> Response:
        return JSONResponse(service.status())

    async def healthz(request: Request) -> Response:
        h = service.healthz()
        return JSONResponse(h, 200 if h["ok"] else 503)

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.exposition(batcher.depth),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    async def http_error(request: Request, exc: HTTPError) -> Response:
        return JSONResponse({"error": str(exc)}, exc.status, headers=exc.headers)

    async def refused(request: Request, exc: ActionRefused) -> Response:
        return JSONResponse({"error": str(exc), "bundle": bundle_id()}, exc.status)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        service.start_watch()
        try:
            yield
        finally:
            await batcher.stop()
            await run_in_threadpool(service.close)

    routes = [Route(p, asset) for p in ASSETS] + [
        Route("/v1/predict", predict, methods=["POST"]),
        Route("/v1/results", results),
        Route(f"/v1/results/{ID}", one_result),
        Route(f"/v1/results/{ID}/thumb.jpg", thumb),
        Route(f"/v1/results/{ID}/overlay.png", overlay_png),
        Route(f"/v1/results/{ID}/good", mark, methods=["POST", "DELETE"]),
        Route(f"/v1/results/{ID}/review", review, methods=["POST"]),
        Route("/v1/reviews", reviews),
        Route("/v1/teach", teach, methods=["GET", "POST"]),
        Route("/v1/switch", switch, methods=["POST"]),
        Route("/v1/rollback", roll_back, methods=["POST"]),
        Route("/v1/threshold", threshold, methods=["GET", "POST"]),
        Route("/v1/bundle", bundle),
        Route("/v1/status", status),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
    ]
    middleware = []
    if is_loopback(opts.host):
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=[*LOOPBACK_NAMES, "[::1]"]))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPError: http_error, ActionRefused: refused})
    app.state.service = service
    app.state.batcher = batcher
    return app
