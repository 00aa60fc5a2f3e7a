"""Encoding and decoding of typed messages, with errors that name the problem.

Decoding never raises for bad input from the other side: it returns a ``DecodeFailure``
with the error code to answer with and, where the frame had one, the request id, so the
answer can be matched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import msgspec

from workers.protocol.framing import Oversized
from workers.protocol.messages import ErrorCode, Request, RequestId, WorkerMessage

_encoder = msgspec.json.Encoder()


class _TagGuard(msgspec.Struct, tag="\x00never", tag_field="type"):
    """Never sent. msgspec accepts a lone tagged struct whose tag field is missing; in a
    union of two it insists on the tag, so a frame without ``"type": "request"`` is refused."""


_request_decoder = msgspec.json.Decoder(Union[Request, _TagGuard])
_worker_decoder = msgspec.json.Decoder(WorkerMessage)


@dataclass(frozen=True)
class DecodeFailure:
    code: str
    message: str
    id: Union[RequestId, None] = None


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def _preview(frame: bytes, limit: int = 80) -> str:
    text = frame[:limit].decode("utf-8", "replace")
    return text + ("..." if len(frame) > limit else "")


def _salvage_id(frame: bytes) -> Union[RequestId, None]:
    """The ``id`` of a JSON object frame that failed typed validation, if it has a usable one."""
    try:
        raw = msgspec.json.decode(frame)
    except msgspec.DecodeError:
        return None
    if isinstance(raw, dict):
        rid = raw.get("id")
        if isinstance(rid, (int, str)) and not isinstance(rid, bool):
            return rid
    return None


def _classify(frame: bytes, err: Exception, what: str) -> DecodeFailure:
    try:
        raw: Any = msgspec.json.decode(frame)
    except msgspec.DecodeError as exc:
        return DecodeFailure(ErrorCode.PARSE_ERROR, f"malformed JSON ({exc}): {_preview(frame)!r}")
    if not isinstance(raw, dict):
        return DecodeFailure(
            ErrorCode.INVALID_MESSAGE, f"a {what} must be a JSON object, got {type(raw).__name__}"
        )
    return DecodeFailure(ErrorCode.INVALID_MESSAGE, f"invalid {what}: {err}", _salvage_id(frame))


def decode_request(frame: Union[bytes, Oversized], max_bytes: int) -> Union[Request, DecodeFailure]:
    """A host frame as a ``Request``, or why it is not one."""
    if isinstance(frame, Oversized):
        return DecodeFailure(
            ErrorCode.FRAME_TOO_LARGE,
            f"frame of {frame.size} bytes exceeds the limit of {max_bytes} bytes",
        )
    try:
        decoded = _request_decoder.decode(frame)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        return _classify(frame, exc, "request")
    if not isinstance(decoded, Request):
        return DecodeFailure(ErrorCode.INVALID_MESSAGE, "invalid request: `type` must be 'request'")
    return decoded


def decode_worker_message(frame: Union[bytes, Oversized]) -> Union[WorkerMessage, DecodeFailure]:
    """A worker frame as a typed message, or why it is not one (a worker that prints garbage)."""
    if isinstance(frame, Oversized):
        return DecodeFailure(ErrorCode.FRAME_TOO_LARGE, f"worker frame of {frame.size} bytes")
    try:
        return _worker_decoder.decode(frame)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        return _classify(frame, exc, "worker message")


def convert_params(params: dict[str, Any], params_type: type) -> Any:
    """Typed parameters of an operation; raises ``msgspec.ValidationError`` naming the field."""
    return msgspec.convert(params, params_type)


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)
