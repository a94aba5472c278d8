"""`/api/stream`: live conversion over a WebSocket, one StreamingConverter per connection.

Protocol: the client's first message is JSON text naming the model and options (the field names of
/api/convert) and the stream's timing (`sample_rate`, and optionally `context_seconds`,
`lookahead_seconds`, `crossfade_seconds`, `sola_search_seconds`, `silence_threshold_db`). The server
answers JSON `{"latency_samples", "sample_rate", "model", "speaker"}`. Every binary message after that is a
block of float32 little-endian mono samples at `sample_rate`, answered by a binary message of the same
length holding the converted block. A bad message is answered `{"error": ...}` and the connection closed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect

from core.audio import read_error_reason
from core.errors import SvcError
from inference.streaming import StreamingConverter, StreamSettings
from server.audio_io import check_samples
from server.errors import PayloadTooLarge, RequestError
from server.params import conversion_options, integer, number, text
from server.pool import LoadedModel, ModelPool
from server.settings import Limits

POLICY_VIOLATION = 1008  # WebSocket close code for a message the protocol does not allow
SAMPLE_BYTES = 4


@dataclass
class StreamSession:
    model: LoadedModel
    converter: StreamingConverter
    sample_rate: int
    max_block: int
    limits: Limits

    def convert(self, block: np.ndarray) -> np.ndarray:
        return self.model.run(self.converter.process, block)


def stream_settings(fields: dict[str, Any], limits: Limits) -> StreamSettings:
    defaults = StreamSettings(sample_rate=44100)
    return StreamSettings(
        sample_rate=integer(fields, "sample_rate", 0, limits.min_sample_rate, limits.max_sample_rate),
        context_seconds=number(fields, "context_seconds", defaults.context_seconds, 0.0, 10.0),
        lookahead_seconds=number(fields, "lookahead_seconds", defaults.lookahead_seconds, 0.0, 2.0),
        crossfade_seconds=number(fields, "crossfade_seconds", defaults.crossfade_seconds, 0.0, 1.0),
        sola_search_seconds=number(fields, "sola_search_seconds", defaults.sola_search_seconds, 0.0, 0.5),
        silence_threshold_db=number(fields, "silence_threshold_db", defaults.silence_threshold_db, -200.0, 0.0))


def parse_start(message: dict) -> dict[str, Any]:
    """The first message: a JSON object in a text frame."""
    if message.get("text") is None:
        raise RequestError("the first message must be JSON text with the stream's model, options and sample_rate")
    try:
        fields = json.loads(message["text"])
    except json.JSONDecodeError as error:
        raise RequestError(f"the first message is not valid JSON ({error})") from None
    if not isinstance(fields, dict):
        raise RequestError("the first message must be a JSON object")
    if fields.get("sample_rate") in (None, ""):
        raise RequestError("the first message must give the stream's sample_rate")
    return fields


def open_session(fields: dict[str, Any], pool: ModelPool, limits: Limits) -> StreamSession:
    model = pool.get(text(fields, "model", ""))
    settings = stream_settings(fields, limits)
    options = conversion_options(fields, model)
    converter = model.run(StreamingConverter, model.svc, options, settings)
    return StreamSession(model, converter, settings.sample_rate,
                         max_block=int(limits.max_block_seconds * settings.sample_rate), limits=limits)


def parse_block(message: dict, session: StreamSession) -> np.ndarray:
    """A binary message as samples, checked as an upload's are (server.audio_io.check_samples)."""
    data = message.get("bytes")
    if data is None:
        raise RequestError("after the first message, send binary blocks of float32 little-endian samples")
    if not data or len(data) % SAMPLE_BYTES:
        raise RequestError(f"a block must hold a whole, non-zero number of float32 samples, got {len(data)} bytes")
    block = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if len(block) > session.max_block:
        raise PayloadTooLarge(f"a block holds at most {session.max_block} samples "
                              f"({session.max_block / session.sample_rate:g} s), got {len(block)}")
    return check_samples(block, "a block", session.sample_rate, session.limits)


async def serve_stream(websocket: WebSocket, pool: ModelPool, limits: Limits) -> None:
    """One client's stream, from its first message until it closes or sends something invalid."""
    await websocket.accept()
    try:
        fields = parse_start(await receive(websocket))
        session = await run_in_threadpool(open_session, fields, pool, limits)
        await websocket.send_json({"latency_samples": int(session.converter.latency_samples),
                                   "sample_rate": session.sample_rate, "model": session.model.name,
                                   "speaker": session.converter.options.speaker})
        while True:
            block = parse_block(await receive(websocket), session)
            converted = await run_in_threadpool(session.convert, block)
            await websocket.send_bytes(np.asarray(converted, dtype="<f4").tobytes())
    except WebSocketDisconnect:
        return
    except SvcError as error:
        await websocket.send_json({"error": read_error_reason(error)})
        await websocket.close(code=POLICY_VIOLATION)


async def receive(websocket: WebSocket) -> dict:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return message
