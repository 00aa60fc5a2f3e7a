"""Worker protocol v1: messages, frames, codec and the generated JSON Schema."""

from workers.protocol.messages import (
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Capabilities,
    ErrorCode,
    ErrorInfo,
    Event,
    Hello,
    OperationInfo,
    Request,
    Response,
)

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "Capabilities",
    "ErrorCode",
    "ErrorInfo",
    "Event",
    "Hello",
    "OperationInfo",
    "Request",
    "Response",
]
