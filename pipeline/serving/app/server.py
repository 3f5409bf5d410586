"""The painting app's HTTP side: the static page and the JSON API (FastAPI; ``/docs`` describes it).

- ``GET /api/models``: registered models, aliases, versions with dataset, size, steps, FID, mIoU;
- ``GET /api/models/{name}/{alias-or-version}`` (and ``GET /api/model?uri=``): class table,
  size, style support;
- ``POST /api/labelmap``: an uploaded label or instance map, checked and resized to the model's size;
- ``POST /api/synthesize``: a label map PNG (indices or class colours), optional instance map,
  style image, seed and number of samples -> PNG images (base64 in JSON, or ``image/png`` for one
  image when the request accepts it).

Images travel as base64 (``data:`` URLs too). Bad input is a 4xx JSON ``{"error": ...}`` naming
the problem: 400 for maps and images the model cannot take and for a body that is not JSON, 404
for a model, alias or version (or a path) that does not exist, 413 for a body over
``app.max_upload_bytes``, 422 for a malformed request. ``/openapi.json`` describes every answer and
``tests/test_app_schema.py`` holds the server to it (Schemathesis). Anything
else is a 500 whose traceback goes to the server's log, never to the client.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from gaugan.errors import GauGANError, InputError
from pipeline.errors import ModelNotFoundError, TrackingError
from pipeline.serving.app.catalog import Catalog, model_uri
from pipeline.serving.synthesize import decode_png, label_indices, render, style_image

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


class SynthesizeRequest(BaseModel):
    model: str | None = Field(None, description="models:/NAME@ALIAS or models:/NAME/VERSION; null: the default")
    label: str = Field(description="label map PNG, base64: class indices (one channel) or class colours (RGB)")
    instance: str | None = Field(None, description="instance id map PNG, base64 (models trained with instances)")
    style: str | None = Field(None, description="style image (PNG or JPEG), base64 (models with a style encoder)")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="style seed; image k uses seed + k")
    n_samples: int = Field(1, ge=1, description="images of the label map, in different styles")
    snap: bool = Field(False, description="colours not in the palette become the nearest class colour")


class LabelMapRequest(BaseModel):
    model: str | None = Field(None, description="the model whose palette and size apply; null: the default")
    image: str = Field(description="PNG, base64")
    kind: str = Field("label", pattern="^(label|instance)$", description="label | instance")
    snap: bool = Field(False, description="colours not in the palette become the nearest class colour")


class SynthesizeResponse(BaseModel):
    model: str = Field(description="the model URI that made the images")
    seed: int | None = Field(description="the style seed of image 0; null for models without style noise")
    width: int = Field(description="the images' width: the label map's (the size rule)")
    height: int
    ms: float = Field(description="inference time")
    images: list[str] = Field(description="PNG images, base64")


class LabelMapResponse(BaseModel):
    model: str
    kind: str = Field(description="label | instance")
    width: int = Field(description="the model's width: the map was resized (nearest) to the model's size")
    height: int
    original_size: list[int] = Field(description="[height, width] of the upload")
    indices: str | None = Field(None, description="label maps: uint8 class indices, row-major, base64")
    png: str | None = Field(None, description="instance maps: a 16-bit PNG of the ids, base64")


class ErrorBody(BaseModel):
    error: str = Field(description="one line naming the problem and, where there is one, the fix")
    kind: str | None = Field(None, description="the error's class (absent on 413)")


def error_responses(*codes: int) -> dict:
    """The OpenAPI description of the error answers an endpoint gives (Schemathesis checks them)."""
    meaning = {
        400: "a map or image the model cannot take, or a body that is not JSON",
        404: "no such model, alias or version",
        413: "a body over app.max_upload_bytes",
        422: "a malformed request",
        503: "the tracking server cannot be reached",
    }
    return {code: {"model": ErrorBody, "description": meaning[code]} for code in codes}


def b64_bytes(text: str, what: str) -> bytes:
    """base64 (optionally a data: URL) -> bytes, with a clear error."""
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what}: not valid base64") from None


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before anything parses it."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send, int(declared))
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await self._refuse(scope, receive, send, size)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, size: int):
        message = (
            f"the request body is {'at least ' if size else ''}{size} bytes, over the limit of {self.limit} "
            "(app.max_upload_bytes): send a smaller image"
        )
        await JSONResponse({"error": message}, status_code=413)(scope, receive, send)


def error_status(err: GauGANError) -> int:
    if isinstance(err, ModelNotFoundError):
        return 404
    if isinstance(err, TrackingError):
        return 503
    return 400


def install_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(GauGANError)
    async def user_error(request: Request, err: GauGANError):
        return JSONResponse({"error": str(err), "kind": type(err).__name__}, status_code=error_status(err))

    @api.exception_handler(RequestValidationError)
    async def bad_request(request: Request, err: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in err.errors()
        )
        return JSONResponse({"error": f"malformed request: {problems}", "kind": "RequestError"}, status_code=422)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        # FastAPI's own refusals (a body that is not JSON, an unknown path or method) in the API's shape
        detail = err.detail if isinstance(err.detail, str) else str(err.detail)
        if err.status_code == 400:
            detail = f"malformed request: the body is not valid JSON ({detail})"
        body = {"error": detail, "kind": "RequestError"}
        return JSONResponse(body, status_code=err.status_code, headers=getattr(err, "headers", None))

    @api.exception_handler(Exception)
    async def bug(request: Request, err: Exception):
        log.exception("internal error on %s", request.url.path)
        message = f"internal error ({type(err).__name__}); the server's log has the details"
        return JSONResponse({"error": message, "kind": "InternalError"}, status_code=500)


class App:
    """The API's work, apart from FastAPI: decoding uploads, rendering, one inference at a time."""

    def __init__(self, catalog: Catalog, settings):
        self.catalog, self.settings = catalog, settings
        # One thread runs every inference, one request at a time (later ones wait): the CPU (or GPU)
        # is busy with one anyway, and memory stays one working set. Run from the server's many
        # request threads, each thread's allocator arena kept its own copy of the paper-size working
        # set (bench/load.py: resident memory 1.27 -> 1.60 GiB in a minute of 4 painters).
        self._inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    def decode_map(self, synth, data: str, kind: str, snap: bool) -> np.ndarray:
        source = f"the uploaded {kind} map"
        raw = decode_png(b64_bytes(data, source), f"{kind} map", source, max_pixels=self.settings.max_pixels)
        if kind == "label":
            return label_indices(synth, raw, source, snap)
        if raw.ndim != 2:
            raise InputError(f"{source}: an instance map must have one channel of ids, got shape {raw.shape}")
        return raw.astype(np.int64)

    def synthesize(self, req: SynthesizeRequest) -> dict:
        if req.n_samples > self.settings.max_samples:
            raise InputError(f"n_samples {req.n_samples} is over the limit of {self.settings.max_samples}")
        uri, synth = self.catalog.get(req.model)
        labels = self.decode_map(synth, req.label, "label", req.snap)
        instance = self.decode_map(synth, req.instance, "instance", False) if req.instance else None
        style = None
        if req.style:
            source = "the uploaded style image"
            style = style_image(b64_bytes(req.style, source), source, self.settings.max_pixels)
        start = time.perf_counter()
        samples = self._inference.submit(render, synth, labels, instance, style, req.seed, req.n_samples).result()
        ms = (time.perf_counter() - start) * 1000
        h, w = labels.shape
        return {
            "model": uri,
            "seed": samples.seed,
            "width": w,
            "height": h,
            "ms": round(ms, 1),
            "images": samples.images,
        }

    def labelmap(self, req: LabelMapRequest) -> dict:
        import torch

        uri, synth = self.catalog.get(req.model)
        array = self.decode_map(synth, req.image, req.kind, req.snap)
        h, w = synth.training_size
        original = list(array.shape)
        # the size rule of every entry point (Synthesizer.fit_maps): the canvas holds the very map the
        # generator would see for this upload in /api/synthesize
        array = synth.fit_maps(torch.from_numpy(array.astype(np.int64))[None])[0].numpy()
        if req.kind == "label":
            synth.check_labels(torch.from_numpy(array))
            payload = {"indices": base64.b64encode(array.astype(np.uint8).tobytes()).decode()}
        else:
            if array.min() < 0 or array.max() > 65535:
                raise InputError(f"the uploaded instance map has ids outside 0..65535 ({array.min()}..{array.max()})")
            payload = {"png": base64.b64encode(png_bytes(array.astype(np.uint16))).decode()}  # 16-bit PNG
        return {"model": uri, "kind": req.kind, "width": w, "height": h, "original_size": original, **payload}


def create_app(catalog: Catalog, settings) -> FastAPI:
    """The FastAPI application (``settings``: the ``app`` section of params.yaml)."""
    api = FastAPI(title="GauGAN painting app", description=__doc__, version="1")
    work = App(catalog, settings)
    install_error_handlers(api)

    @api.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html")

    @api.get("/api/config", responses=error_responses(503))
    def config() -> dict:
        """The page's settings and the preselected model."""
        models = catalog.list_models()
        keys = ("debounce_ms", "max_samples", "display_px", "max_upload_bytes")
        return {**{k: getattr(settings, k) for k in keys}, "default_model": catalog.default_model(models)}

    @api.get("/api/models", responses=error_responses(503))
    def models() -> dict:
        """Registered models, their aliases and versions (dataset, size, training steps, FID, mIoU)."""
        found = catalog.list_models()
        return {"tracking_uri": catalog.tracking_uri, "default": catalog.default_model(found), "models": found}

    @api.get("/api/models/{name}/{ref}", responses=error_responses(400, 404, 422, 503))
    def model(name: str, ref: str) -> dict:
        """One model by alias or version: class table (most frequent first), size, style support."""
        return catalog.describe(model_uri(name, ref))

    @api.get("/api/model", responses=error_responses(400, 404, 422, 503))
    def model_by_uri(uri: str | None = None) -> dict:
        """The same by URI (the default model when none is given)."""
        return catalog.describe(uri)

    @api.post("/api/labelmap", responses=error_responses(400, 404, 413, 422, 503))
    def labelmap(req: LabelMapRequest) -> LabelMapResponse:
        """An uploaded map, checked against the model and resized (nearest) to its size."""
        return LabelMapResponse(**work.labelmap(req))

    @api.post(
        "/api/synthesize",
        response_model=None,
        responses={
            200: {"model": SynthesizeResponse, "content": {"image/png": {}}, "description": "the images"},
            **error_responses(400, 404, 413, 422, 503),
        },
    )
    def synthesize(req: SynthesizeRequest, request: Request) -> Response | SynthesizeResponse:
        """Label map (+ instance map, style image, seed) -> images, the label map's size."""
        out = work.synthesize(req)
        images = [png_bytes(image) for image in out.pop("images")]
        if len(images) == 1 and "image/png" in request.headers.get("accept", ""):
            return Response(images[0], media_type="image/png", headers={"X-Seed": str(out["seed"])})
        return SynthesizeResponse(**out, images=[base64.b64encode(png).decode() for png in images])

    api.mount("/static", StaticFiles(directory=STATIC), name="static")
    api.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    return api


def serve(settings, model: str | None, tracking_uri: str, data_root: Path | None) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    catalog = Catalog(tracking_uri, model, settings.device, settings.cache_models, data_root)
    api = create_app(catalog, settings)
    log.info("painting app on http://%s:%d (models from %s)", settings.host, settings.port, tracking_uri)
    uvicorn.run(api, host=settings.host, port=settings.port, log_level="warning")
