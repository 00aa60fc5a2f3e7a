"""Frames: one JSON message per line, read and written on binary streams.

This module knows bytes and lines, nothing about what a message means (that is
``codec``'s job, and dispatch is the worker's). A frame that is too long is consumed to
its end and reported, so the stream stays in sync.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import BinaryIO, Union


@dataclass(frozen=True)
class Oversized:
    """A line longer than the limit; its bytes were discarded up to the newline."""

    size: int  # bytes seen before the newline (or EOF)


Frame = Union[bytes, Oversized]


class FrameReader:
    """Reads newline-terminated frames of at most ``max_bytes`` (newline excluded)."""

    def __init__(self, stream: BinaryIO, max_bytes: int) -> None:
        if max_bytes < 2:
            raise ValueError(f"max_bytes must be at least 2, got {max_bytes}")
        self._stream = stream
        self._max = max_bytes

    def read(self) -> Union[Frame, None]:
        """The next non-empty frame without its newline, an ``Oversized`` marker, or None at EOF."""
        while True:
            line = self._stream.readline(self._max + 1)
            if not line:
                return None
            if line.endswith(b"\n"):
                line = line[:-1]
                if line.endswith(b"\r"):
                    line = line[:-1]
                if line.strip():
                    return line
                continue  # blank lines are keep-alives, not messages
            if len(line) <= self._max:
                # EOF in the middle of a line: hand over what we have, the decoder judges it.
                return line if line.strip() else None
            return self._skip_rest(len(line))

    def _skip_rest(self, seen: int) -> Oversized:
        while True:
            chunk = self._stream.readline(65536)
            if not chunk:
                return Oversized(seen)
            seen += len(chunk)
            if chunk.endswith(b"\n"):
                return Oversized(seen - 1)


class FrameWriter:
    """Writes whole frames atomically with respect to other threads of this process."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, payload: bytes) -> None:
        if b"\n" in payload:
            raise ValueError("a frame must not contain a newline")
        data = memoryview(payload + b"\n")
        with self._lock:
            # An unbuffered stream may take part of a large frame per call.
            while data:
                written = self._stream.write(data)
                data = data[written if written is not None else len(data):]
            self._stream.flush()

    def close(self) -> None:
        with self._lock:
            self._stream.close()
