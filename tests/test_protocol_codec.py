"""Framing and decoding: every bad input becomes a named error; nothing raises."""

from __future__ import annotations

import io
import json

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.protocol import codec
from workers.protocol.codec import DecodeFailure
from workers.protocol.framing import FrameReader, FrameWriter, Oversized
from workers.protocol.messages import ErrorCode, ErrorInfo, Event, Request, Response


def frames(data: bytes, limit: int = 64) -> list:
    reader = FrameReader(io.BytesIO(data), limit)
    out = []
    while (f := reader.read()) is not None:
        out.append(f)
    return out


def test_reader_splits_lines_skips_blank_and_strips_crlf() -> None:
    assert frames(b'{"a":1}\n\n  \n{"b":2}\r\n{"c":3}') == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


def test_oversized_line_is_reported_and_stream_stays_in_sync() -> None:
    data = b"x" * 200 + b"\n" + b'{"ok":1}\n'
    got = frames(data, limit=64)
    assert got == [Oversized(200), b'{"ok":1}']


def test_writer_refuses_embedded_newline_and_writes_whole_frames() -> None:
    buf = io.BytesIO()
    w = FrameWriter(buf)
    w.write(b'{"a":1}')
    try:
        w.write(b"a\nb")
    except ValueError as exc:
        assert "newline" in str(exc)
    else:
        raise AssertionError("a frame with a newline was accepted")
    assert buf.getvalue() == b'{"a":1}\n'


def test_request_round_trip() -> None:
    req = Request(id=7, op="ping", params={"payload": "é"}, deadline_ms=250.0, priority=1)
    assert codec.decode_request(codec.encode(req), 1024) == req


def test_response_and_event_round_trip() -> None:
    for msg in (Response(id="a", ok=True, result={"x": [1, 2]}),
                Response(id=None, ok=False, error=ErrorInfo(ErrorCode.PARSE_ERROR, "bad", False)),
                Event(event="progress", id=3, data={"step": 1, "total": 2})):
        assert codec.decode_worker_message(codec.encode(msg)) == msg


def test_malformed_json_is_parse_error_with_preview() -> None:
    f = codec.decode_request(b"{not json", 1024)
    assert isinstance(f, DecodeFailure) and f.code == ErrorCode.PARSE_ERROR and "{not json" in f.message


def test_wrong_field_type_names_the_field_and_keeps_the_id() -> None:
    f = codec.decode_request(b'{"type":"request","id":5,"op":"ping","priority":"high"}', 1024)
    assert isinstance(f, DecodeFailure)
    assert f.code == ErrorCode.INVALID_MESSAGE and f.id == 5 and "priority" in f.message


def test_missing_op_and_non_object_are_invalid_messages() -> None:
    f1 = codec.decode_request(b'{"type":"request","id":"q"}', 1024)
    f2 = codec.decode_request(b"[1,2]", 1024)
    assert isinstance(f1, DecodeFailure) and f1.code == ErrorCode.INVALID_MESSAGE and "op" in f1.message
    assert isinstance(f2, DecodeFailure) and f2.code == ErrorCode.INVALID_MESSAGE and "list" in f2.message


def test_oversized_frame_decodes_to_frame_too_large() -> None:
    f = codec.decode_request(Oversized(5000), 1024)
    assert isinstance(f, DecodeFailure) and f.code == ErrorCode.FRAME_TOO_LARGE and "5000" in f.message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    out = codec.decode_request(data, 256)
    assert isinstance(out, (Request, DecodeFailure))
    if isinstance(out, DecodeFailure):
        assert out.code in ErrorCode.ALL and out.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "id", "op", "params", "deadline_ms", "priority", "x"]),
                       json_values, max_size=6))
def test_decoder_never_raises_on_arbitrary_json_objects(obj: dict) -> None:
    out = codec.decode_request(json.dumps(obj).encode(), 1 << 16)
    assert isinstance(out, (Request, DecodeFailure))
    if isinstance(out, Request):  # accepted only when it really is a request
        assert obj.get("type") == "request" and isinstance(out.op, str)


def test_a_frame_without_the_request_tag_is_refused_with_its_id() -> None:
    # msgspec accepts a lone tagged struct with its tag missing; found by the property above.
    out = codec.decode_request(b'{"id": 0, "op": ""}', 1 << 16)
    assert isinstance(out, DecodeFailure) and out.code == ErrorCode.INVALID_MESSAGE
    assert "type" in out.message and out.id == 0


def test_params_conversion_names_the_bad_field() -> None:
    from workers.protocol.messages import PingParams

    try:
        codec.convert_params({"payload": 3}, PingParams)
    except msgspec.ValidationError as exc:
        assert "payload" in str(exc)
    else:
        raise AssertionError("wrong type accepted")
