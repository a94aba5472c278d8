"""The FastAPI application: 4.1's /voiceChangeModel and /wav2wav, the JSON API and the WebSocket stream.

Conversions run in worker threads so that the event loop keeps answering (health checks, other models)
while a model is busy; each model's lock serialises the requests that use it (see server/pool.py).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from loguru import logger
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from core.audio import read_error_reason
from core.errors import SvcError
from inference.svc import ConversionOptions
from server.audio_io import check_format, decode_upload, encode_audio, media_type, to_rate
from server.errors import RequestError, status_of
from server.params import MAX_TRANSPOSE, conversion_options, integer, number, text
from server.pool import LoadedModel, ModelPool
from server.settings import Limits
from server.stream import serve_stream

MAX_FORM_FIELD_BYTES = 64 * 1024  # text fields are short; only the audio part may be large
PATH_REFUSAL = ("audio_path names a file on the server, which this server never reads for a client; "
                "upload the audio instead, as the multipart file field 'audio'")


def create_app(pool: ModelPool, limits: Limits) -> FastAPI:
    """The application serving the models of `pool` within `limits`."""
    app = FastAPI(title="so-vits-svc server", docs_url=None, redoc_url=None, openapi_url=None)
    add_error_handlers(app)
    add_vst_routes(app, pool, limits)
    add_api_routes(app, pool, limits)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every refusal is answered by its one line, passed through core.audio.read_error_reason so that no text a
    library put in an error (an in-memory file's object address) reaches the client."""
    @app.exception_handler(SvcError)
    async def user_error(_request: Request, error: SvcError) -> JSONResponse:
        return JSONResponse({"error": read_error_reason(error)}, status_code=status_of(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": read_error_reason(RequestError(str(error.detail)))},
                            status_code=error.status_code)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _error: ClientDisconnect) -> Response:
        """The client closed the connection before its request was read: nobody is left to answer."""
        logger.warning(f"client went away during the upload of {request.url.path}")
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        logger.opt(exception=error).error(f"{request.method} {request.url.path} failed")
        return JSONResponse({"error": f"internal error ({type(error).__name__}); see the server's log"},
                            status_code=500)


# ----- requests -------------------------------------------------------------------------------------

async def read_form(request: Request) -> FormData:
    return await request.form(max_files=4, max_fields=64, max_part_size=MAX_FORM_FIELD_BYTES)


def text_fields(form: FormData) -> dict[str, str]:
    return {name: value for name, value in form.items() if isinstance(value, str)}


async def song_request(request: Request, pool: ModelPool) -> tuple[FormData, dict[str, str], LoadedModel, str]:
    """The common part of a whole-song request: (form, its text fields, the model, the checked output format).

    A server path (`audio_path`, as 4.1 took) is refused: the client uploads the audio.
    """
    form = await read_form(request)
    if "audio_path" in form:
        raise RequestError(PATH_REFUSAL)
    fields = text_fields(form)
    model = pool.get(text(fields, "model", ""))
    wav_format = text(fields, "wav_format", "wav")
    check_format(wav_format, model.sample_rate)
    return form, fields, model, wav_format


async def uploaded_audio(form: FormData, field: str, limits: Limits) -> tuple[np.ndarray, int]:
    """The file field `field` decoded: (mono float32 samples, their rate)."""
    upload = form.get(field)
    if upload is None:
        raise RequestError(f"upload the audio as the multipart file field '{field}'")
    if not isinstance(upload, UploadFile):
        raise RequestError(f"'{field}' must be an uploaded file, not a text field")
    return decode_upload(await upload.read(), field, limits)


async def convert(model: LoadedModel, audio: np.ndarray, sr: int, options: ConversionOptions) -> np.ndarray:
    started = time.perf_counter()
    out = await run_in_threadpool(model.convert, audio, sr, options)
    logger.info(f"converted {len(audio) / sr:.1f} s for '{model.name}' speaker {options.speaker} "
                f"key {options.trans:g} in {time.perf_counter() - started:.1f} s (waiting for the model included)")
    return out


def audio_response(data: bytes, wav_format: str, headers: dict[str, str] | None = None) -> Response:
    disposition = {"Content-Disposition": f'attachment; filename="temp.{wav_format.lower()}"'}
    return Response(data, media_type=media_type(wav_format), headers={**disposition, **(headers or {})})


# ----- 4.1's endpoints ------------------------------------------------------------------------------

def add_vst_routes(app: FastAPI, pool: ModelPool, limits: Limits) -> None:
    @app.post("/voiceChangeModel")
    async def voice_change_model(request: Request) -> Response:
        """The VST plugin's call: a wav at the DAW's rate in, the converted wav (16-bit PCM) at that rate out."""
        form = await read_form(request)
        fields = text_fields(form)
        model = pool.get(text(fields, "model", ""))
        if not fields.get("sampleRate"):
            raise RequestError("sampleRate (the DAW's sample rate, for the reply) is required")
        daw_rate = integer(fields, "sampleRate", 0, limits.min_sample_rate, limits.max_sample_rate)
        options = conversion_options({}, model, trans=number(fields, "fPitchChange", 0.0, -MAX_TRANSPOSE,
                                                                 MAX_TRANSPOSE),
                                     speaker=integer(fields, "sSpeakId", 0, 0, 1_000_000))
        audio, sr = await uploaded_audio(form, "sample", limits)
        out = await convert(model, audio, sr, options)
        reply = to_rate(out, model.sample_rate, daw_rate, round(len(audio) * daw_rate / sr))
        return audio_response(encode_audio(reply, daw_rate, "wav", "PCM_16"), "wav")

    @app.post("/wav2wav")
    async def wav2wav(request: Request) -> Response:
        """A whole song: the uploaded file 'audio', key `tran`, speaker `spk`, reply in `wav_format`."""
        form, fields, model, wav_format = await song_request(request, pool)
        options = conversion_options({}, model, trans=number(fields, "tran", 0.0, -MAX_TRANSPOSE, MAX_TRANSPOSE),
                                     speaker=text(fields, "spk", model.speakers[0]))
        audio, sr = await uploaded_audio(form, "audio", limits)
        out = await convert(model, audio, sr, options)
        return audio_response(encode_audio(out, model.sample_rate, wav_format), wav_format)


# ----- the JSON API ---------------------------------------------------------------------------------

def add_api_routes(app: FastAPI, pool: ModelPool, limits: Limits) -> None:
    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(pool.models)}

    @app.get("/api/models")
    async def models() -> dict[str, Any]:
        return {"default": pool.default.name, "models": [model.describe() for model in pool.models.values()],
                "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_seconds": limits.max_seconds}}

    @app.post("/api/convert")
    async def api_convert(request: Request) -> Response:
        """Upload 'audio' with inference_main.py's options by their long names; the reply is at the model rate."""
        form, fields, model, wav_format = await song_request(request, pool)
        options = conversion_options(fields, model)
        audio, sr = await uploaded_audio(form, "audio", limits)
        out = await convert(model, audio, sr, options)
        headers = {"X-Model": model.name, "X-Speaker": str(options.speaker), "X-Sample-Rate": str(model.sample_rate)}
        return audio_response(encode_audio(out, model.sample_rate, wav_format), wav_format, headers)

    @app.websocket("/api/stream")
    async def stream(websocket: WebSocket) -> None:
        await serve_stream(websocket, pool, limits)
