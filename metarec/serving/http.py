"""The HTTP service behind ``metarec serve``: one model, loaded once, behind FastAPI.

Endpoints: ``POST /recommend``, ``POST /predict``, ``GET /health``, ``GET /model`` (the model
card and the service's limits), OpenAPI docs at ``/docs``. Request bodies are validated by
pydantic (422 naming the field); a model-level problem (an unknown item, a rating out of range)
is a 422 in the same shape. Limits: body bytes (413), ratings per request, candidates per
request and ``k`` (422), requests waiting for the model (503 when full).

Inference runs in a bounded thread pool (``workers`` threads, default 1) under
``torch.inference_mode()`` (or ``no_grad`` for a learner whose adaptation needs autograd, see
:attr:`RecommenderModel.grad_mode`), so the event loop keeps accepting and validating requests
while the model works. Concurrent ``/recommend`` requests are micro-batched
(:class:`MicroBatcher`): while the model works, arriving requests wait, and the next call adapts
all of them at once (up to ``max_batch``) -- no request waits for a batch to fill, and a batch of
users costs the model far less than the same users one by one.
"""


import asyncio
import re
from contextlib import asynccontextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Literal, Optional, Union

from metarec.serving.model import RatingRangeError, RecommendError, RecommenderModel, UnknownItemError


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_body_bytes: int = 1_000_000
    max_ratings: int = 1000
    max_candidates: int = 100_000
    max_k: int = 1000
    #: Requests admitted at once (running or waiting for the model); more get 503.
    max_pending: int = 64
    #: Threads that run the model.
    workers: int = 1
    #: Concurrent /recommend requests adapted and scored in one model call (1 = no batching).
    max_batch: int = 16

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


class MicroBatcher:
    """Run concurrent ``recommend`` requests of a model together, greedily.

    A request that arrives while fewer than ``workers`` model calls run starts one at once; the
    others queue, and each call that finishes starts the next with every queued request (up to
    ``max_batch``) that shares its batch-level options (``k``, ``exclude_rated``, ``item_state``,
    ``unknown_items``) through :meth:`RecommenderModel.recommend_batch`. Learners adapt each user
    of a batch independently (a contract rule), so a batched answer is the answer alone. When a
    batch holds a request the model refuses (an unknown item, a rating out of range), its
    requests are answered one by one, so each error names its own request's field.
    """

    def __init__(self, model: RecommenderModel, pool: ThreadPoolExecutor, *, workers: int, max_batch: int) -> None:
        self.model, self.pool, self.workers, self.max_batch = model, pool, workers, max_batch
        self.queue: list[tuple[tuple, dict[str, Any], asyncio.Future]] = []
        self.running = 0
        #: Sizes of the batches run so far (for /health).
        self.batches = 0
        self.batched_requests = 0

    async def recommend(self, request: dict[str, Any], **options: Any) -> Any:
        """``model.recommend(**request, **options)``, possibly in one call with concurrent requests."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        key = tuple(sorted(options.items()))
        self.queue.append((key, request, future))
        self._start(loop)
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        while self.running < self.workers and self.queue:
            key = self.queue[0][0]
            group = [e for e in self.queue if e[0] == key][: self.max_batch]
            taken = {id(e) for e in group}
            self.queue = [e for e in self.queue if id(e) not in taken]
            group = [e for e in group if not e[2].cancelled()]
            if not group:
                continue
            self.running += 1
            self.batches += 1
            self.batched_requests += len(group)
            call = loop.run_in_executor(self.pool, self._run, dict(key), [e[1] for e in group])
            call.add_done_callback(lambda done, group=group: self._finish(loop, done, group))

    def _run(self, options: dict[str, Any], requests: list[dict[str, Any]]) -> list[Any]:
        try:
            return self.model.recommend_batch(requests, **options)
        except RecommendError:
            if len(requests) == 1:
                raise
        out: list[Any] = []
        for r in requests:
            try:
                out.append(self.model.recommend_batch([r], **options)[0])
            except RecommendError as exc:
                out.append(exc)
        return out

    def _finish(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future, group: list) -> None:
        self.running -= 1
        exc = None if done.cancelled() else done.exception()
        results = None if exc is not None or done.cancelled() else done.result()
        for n, (_, _, future) in enumerate(group):
            if future.done():
                continue
            if done.cancelled():
                future.cancel()
            elif exc is not None:
                future.set_exception(exc)
            elif isinstance(results[n], BaseException):
                future.set_exception(results[n])
            else:
                future.set_result(results[n])
        self._start(loop)


class BodyLimit:
    """ASGI middleware: refuse a request body over ``limit`` bytes with 413 (declared or streamed)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send, int(declared))
            return
        seen = 0

        async def counted_receive() -> dict:
            # A body streamed without a length is counted as it arrives; FastAPI turns the
            # HTTPException into the response (any other exception would become a 400).
            from fastapi import HTTPException

            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, detail=self._detail(f"more than {self.limit} bytes"))
            return message

        await self.app(scope, counted_receive, send)

    def _detail(self, size: str) -> list[dict[str, Any]]:
        return [{"loc": ["body"], "msg": f"request body of {size} exceeds the limit of {self.limit} bytes",
                 "type": "body_too_large"}]

    async def _refuse(self, send: Any, size: int) -> None:
        import json

        body = json.dumps({"detail": self._detail(f"{size} bytes")}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _loc(field: str) -> list[Any]:
    """``ratings[3].item`` -> ``["body", "ratings", 3, "item"]``."""
    out: list[Any] = ["body"]
    for part in re.findall(r"[^.\[\]]+", field or ""):
        out.append(int(part) if part.isdigit() else part)
    return out


def create_app(model: RecommenderModel, limits: Limits | None = None) -> Any:
    """The FastAPI application serving ``model`` (already loaded) under ``limits``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

    limits = limits or Limits()
    model.warn_on_skip = False  # skipped unknown items are reported in each response's notes
    pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="metarec-inference")
    batcher = MicroBatcher(model, pool, workers=limits.workers, max_batch=limits.max_batch)
    state = {"pending": 0, "served": 0, "errors": 0}
    ItemId = Union[StrictStr, StrictInt]
    FeatureValue = Union[StrictStr, StrictInt, StrictFloat, StrictBool, list[Union[StrictStr, StrictInt]], None]

    class Rating(BaseModel):
        """One rating of the user: an item id of the catalogue and a rating in the model's range."""

        model_config = ConfigDict(extra="forbid")
        item: ItemId
        rating: Union[StrictInt, StrictFloat]

    class RecommendRequest(BaseModel):
        """A new user: profile (raw feature values) and first ratings, oldest first."""

        model_config = ConfigDict(extra="forbid")
        user: dict[str, FeatureValue] = Field(default_factory=dict, description="raw user feature values")
        user_id: Optional[StrictStr] = Field(None, description="optional, echoed back; seeds per-user draws")
        ratings: list[Rating] = Field(default_factory=list, max_length=limits.max_ratings)
        k: StrictInt = Field(10, ge=1, le=limits.max_k)
        exclude_rated: StrictBool = True
        candidates: Optional[list[ItemId]] = Field(None, max_length=limits.max_candidates,
                                                   description="item ids to rank (default: the catalogue)")
        item_state: Optional[Literal["warm", "cold"]] = None
        unknown_items: Literal["error", "skip"] = "error"

    class PredictRequest(BaseModel):
        """A user's profile and ratings, and the items whose ratings to predict."""

        model_config = ConfigDict(extra="forbid")
        user: dict[str, FeatureValue] = Field(default_factory=dict)
        user_id: Optional[StrictStr] = None
        ratings: list[Rating] = Field(default_factory=list, max_length=limits.max_ratings)
        items: list[ItemId] = Field(..., min_length=1, max_length=limits.max_candidates)
        unknown_items: Literal["error", "skip"] = "error"

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        lifespan=lifespan,
        title=f"metarec: {model.method}",
        description="Recommendations for new users from their profile and first ratings (metarec serve).",
        version=str(model.info.get("metarec", "")),
    )

    @app.exception_handler(RecommendError)
    async def _model_error(request: Request, exc: RecommendError) -> JSONResponse:
        kind = "unknown_item" if isinstance(exc, UnknownItemError) else "rating_range" if isinstance(exc, RatingRangeError) else "value_error"
        return JSONResponse(status_code=422, content={"detail": [{"loc": _loc(exc.field), "msg": str(exc), "type": kind}]})

    async def run(fn: Any, *, batched: Any = None) -> Any:
        """``fn()`` in the pool, or ``await batched()`` through the micro-batcher, under the pending limit."""
        if state["pending"] >= limits.max_pending:
            return JSONResponse(status_code=503, headers={"Retry-After": "1"}, content={
                "detail": f"server busy: {state['pending']} requests pending (limit {limits.max_pending}); retry"})
        state["pending"] += 1
        try:
            if batched is not None:
                result = await batched()
            else:
                result = await asyncio.get_running_loop().run_in_executor(pool, fn)
            state["served"] += 1
            return result
        except RecommendError:
            state["errors"] += 1
            raise
        finally:
            state["pending"] -= 1

    @app.post("/recommend", summary="The k best items for a new user")
    async def recommend(req: RecommendRequest) -> Any:
        ratings = [(r.item, r.rating) for r in req.ratings]
        request = dict(user=req.user, ratings=ratings, candidates=req.candidates, user_id=req.user_id)
        out = await run(None, batched=lambda: batcher.recommend(
            request, k=req.k, exclude_rated=req.exclude_rated, item_state=req.item_state,
            unknown_items=req.unknown_items))
        if isinstance(out, JSONResponse):
            return out
        # plain JSON types already: rendered as they are, without FastAPI's jsonable_encoder pass
        return JSONResponse({"model": model.method, "user_id": req.user_id, **out.to_dict()})

    @app.post("/predict", summary="Predicted ratings of given items for a user")
    async def predict(req: PredictRequest) -> Any:
        ratings = [(r.item, r.rating) for r in req.ratings]
        out = await run(lambda: model.predict(req.user, ratings, req.items, unknown_items=req.unknown_items,
                                              user_id=req.user_id))
        if isinstance(out, JSONResponse):
            return out
        return JSONResponse({"model": model.method, "user_id": req.user_id, **out.to_dict()})

    @app.get("/health", summary="Liveness and load")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model.method, "items": len(model.catalogue), "pending": state["pending"],
                "served": state["served"], "errors": state["errors"],
                "batches": batcher.batches, "batched_requests": batcher.batched_requests}

    @app.get("/model", summary="The model card and this service's limits")
    async def card() -> dict[str, Any]:
        return {
            "card": model.card,
            "method": model.method,
            "rating_range": list(model.rating_range),
            "catalogue_items": len(model.catalogue),
            "user_features": {p: model.policies[p].rule for p in model.policies},
            "inference": {"grad_mode": model.grad_mode, "workers": limits.workers, "max_batch": limits.max_batch,
                          "precomputed_item_inputs": model.precomputed_item_inputs},
            "limits": asdict(limits),
        }

    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    return app


__all__ = ["BodyLimit", "Limits", "MicroBatcher", "create_app"]
