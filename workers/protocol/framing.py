"""Frames: one JSON message per line, read and written on binary streams.

This module knows bytes and lines, nothing about what a message means (that is
``codec``'s job, and dispatch is the worker's or the client's). ``FrameDecoder`` is
sans-IO: feed it whatever bytes arrived, get back whole frames; a line that is too long
is discarded to its end and reported, so the stream stays in sync.
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


class FrameDecoder:
    """Splits a byte stream into frames of at most ``max_bytes`` (newline excluded).

    Blank lines are keep-alives and yield nothing; a trailing ``\\r`` is dropped."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 2:
            raise ValueError(f"max_bytes must be at least 2, got {max_bytes}")
        self._max = max_bytes
        self._buf = bytearray()
        self._skipping: Union[int, None] = None  # bytes of an oversized line seen so far

    def feed(self, data: bytes) -> list[Frame]:
        if not self._buf and self._skipping is None and data.endswith(b"\n") and data.count(b"\n") == 1:
            # The common case, one whole frame per read: no buffer juggling.
            out: list[Frame] = []
            self._emit(data[:-1], out)
            return out
        out = []
        self._buf += data
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl < 0:
                break
            if self._skipping is not None:
                out.append(Oversized(self._skipping + nl - start))
                self._skipping = None
            else:
                self._emit(bytes(self._buf[start:nl]), out)
            start = nl + 1
        del self._buf[:start]
        if len(self._buf) > self._max:  # no newline in sight: drop what we have, remember its size
            self._skipping = (self._skipping or 0) + len(self._buf)
            self._buf.clear()
        return out

    def finish(self) -> list[Frame]:
        """At EOF: a last line without a newline, handed over for the decoder to judge."""
        out: list[Frame] = []
        if self._skipping is not None:
            out.append(Oversized(self._skipping + len(self._buf)))
        elif self._buf.strip():
            self._emit(bytes(self._buf), out)
        self._buf.clear()
        self._skipping = None
        return out

    def _emit(self, line: bytes, out: list[Frame]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self._max:
            out.append(Oversized(len(line)))
        elif line.strip():
            out.append(line)


class FrameReader:
    """Blocking frame reads from a stream (the worker's stdin)."""

    def __init__(self, stream: BinaryIO, max_bytes: int) -> None:
        self._stream = stream
        self._decoder = FrameDecoder(max_bytes)
        self._ready: list[Frame] = []
        self._eof = False

    def read(self) -> Union[Frame, None]:
        """The next frame, or None at EOF."""
        while not self._ready:
            if self._eof:
                return None
            read1 = getattr(self._stream, "read1", None)
            data = read1(65536) if read1 is not None else self._stream.read(65536)
            if data:
                self._ready = self._decoder.feed(data)
            else:
                self._eof = True
                self._ready = self._decoder.finish()
        return self._ready.pop(0)


class FrameWriter:
    """Writes whole frames atomically with respect to other threads of this process."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, payload: bytes) -> None:
        if b"\n" in payload:
            raise ValueError("a frame must not contain a newline")
        data = payload + b"\n"
        with self._lock:
            written = self._stream.write(data)
            if written is not None and written < len(data):
                # An unbuffered stream may take part of a large frame per call.
                rest = memoryview(data)[written:]
                while rest:
                    n = self._stream.write(rest)
                    rest = rest[n if n is not None else len(rest):]
            self._stream.flush()

    def write_raw(self, data: bytes) -> None:
        """Bytes as they are, unframed (fault injection: corruption in transit)."""
        with self._lock:
            self._stream.write(data)
            self._stream.flush()

    def close(self) -> None:
        with self._lock:
            self._stream.close()
