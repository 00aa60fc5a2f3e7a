"""4.1 link benchmarks: checked transfers, the capability profile, and the runners that use them.

Unit tests: throughput windows against a hand-computed fixture, chunking, reply checks, profile
completeness, frame arithmetic. Subprocess tests run the real worker: a corrupted payload is
detected, oversized and malformed requests are named errors after which the worker still serves,
a stream bigger than the worker's frame limit is split and arrives intact, a killed worker is
replaced and serves again.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import sys
from typing import Any

import pytest

from hybrid_assets.harness.results import Recorder
from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.device_link import (
    check_reply,
    connection_reliability,
    data_transfer,
    reconnection,
    split,
    window_throughputs,
)
from hybrid_assets.runners.device_profiling import profile_fields
from workers.host import WorkerClient, WorkerError
from workers.protocol import codec
from workers.protocol.messages import Request
from workers.protocol.ops_link import max_payload_bytes

subprocess_test = pytest.mark.subprocess


def _ctx(argv: list[str], params: dict[str, Any]) -> RunnerContext:
    # These runners spawn their own workers: no shared pool is needed.
    return RunnerContext("t", "smoke", params, None, argv, Recorder(), logging.getLogger("test"))  # type: ignore[arg-type]


def _labels(rec: Recorder, metric: str) -> list[dict[str, Any]]:
    return [s.labels for s in rec.samples if s.metric == metric]


# ---- unit --------------------------------------------------------------------------------------
def test_window_throughputs_match_a_hand_computed_fixture() -> None:
    # start 10.0, end 13.5, 1-s windows: three full windows; the half window at the end is dropped.
    deliveries = [
        (9.9, 1_000_000),  # before the start: not counted
        (10.2, 125_000), (10.9, 125_000),  # window 0: 250,000 B = 2.0 Mbit/s
        (11.0, 250_000),  # window 1 (its lower edge is inclusive): 2.0 Mbit/s
        (12.99, 125_000),  # window 2: 1.0 Mbit/s
        (13.2, 1_000_000),  # the partial window: dropped
    ]
    assert window_throughputs(deliveries, 10.0, 13.5, 1.0) == pytest.approx([2.0, 2.0, 1.0])
    # Half-second windows over the same data: 7 full windows, the last one [13.0, 13.5) now full.
    assert window_throughputs(deliveries, 10.0, 13.5, 0.5) == pytest.approx([2.0, 2.0, 4.0, 0.0, 0.0, 2.0, 16.0])
    assert window_throughputs([], 0.0, 2.0, 1.0) == [0.0, 0.0]  # a stalled link reads as zero, not as no sample
    with pytest.raises(ValueError, match="window_s"):
        window_throughputs(deliveries, 10.0, 13.5, 0.0)


def test_split_covers_the_payload_in_order() -> None:
    data = bytes(range(256)) * 10
    parts = split(data, 1000)
    assert [len(p) for p in parts] == [1000, 1000, 560]
    assert b"".join(parts) == data
    assert split(b"", 10) == [b""]
    with pytest.raises(ValueError, match="chunk_bytes"):
        split(data, 0)


def _answer(sent: bytes, reply: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(sent).hexdigest()
    return {"intact": True, "received_sha256": digest, "received_bytes": len(sent),
            "payload": base64.b64encode(reply).decode(), "sha256": hashlib.sha256(reply).hexdigest()}


def test_check_reply_catches_corruption_and_truncation_either_way() -> None:
    sent, reply = os.urandom(300), os.urandom(200)
    digest = hashlib.sha256(sent).hexdigest()
    assert check_reply(sent, digest, 200, _answer(sent, reply)) == (True, True)
    # The worker digested other bytes than the host sent, even if it claims intact.
    assert check_reply(sent, digest, 200, _answer(sent[:-1] + b"\0", reply))[0] is False
    damaged = _answer(sent, reply)
    damaged["payload"] = base64.b64encode(reply[:-1] + bytes([reply[-1] ^ 1])).decode()
    assert check_reply(sent, digest, 200, damaged) == (True, False)
    assert check_reply(sent, digest, 200, _answer(sent, reply[:150]))[1] is False  # truncated reply
    not_base64 = _answer(sent, reply)
    not_base64["payload"] = "@@@@"
    assert check_reply(sent, digest, 200, not_base64) == (True, False)
    assert check_reply(sent, digest, 200, {}) == (False, False)  # nothing arrived


def test_a_max_size_payload_fits_the_frame_limit() -> None:
    limit = 1 << 16
    n = max_payload_bytes(limit)
    frame = codec.encode(Request(id=2**53, op="link.transfer", deadline_ms=30000.0,
                                 params={"payload": os.urandom(n), "sha256": "f" * 64, "reply_bytes": n}))
    assert len(frame) <= limit
    assert n > 0.7 * limit  # and the envelope reserve does not waste the frame
    with pytest.raises(ValueError, match="no room"):
        max_payload_bytes(100)


def test_profile_completeness_requires_every_measured_field() -> None:
    profile = {
        "device": {"kind": "cpu", "name": "x", "memory_total": 8, "memory_free": 4, "cores": 2},
        "host_to_device_gbps": 10.0, "device_to_host_gbps": 9.0, "device_copy_gbps": 8.0,
        "dtypes": ["float32", "int8"],
        "compute": {"float32": {"ops_per_s": 1e9}, "int8": {"ops_per_s": 2e9}},
    }
    assert all(profile_fields(profile, ["float32", "int8"]).values())
    # Discovery found bfloat16 runs, the profile has no throughput for it: incomplete.
    fields = profile_fields(profile, ["float32", "int8", "bfloat16"])
    assert [f for f, ok in fields.items() if not ok] == ["compute.bfloat16"]
    profile["device_copy_gbps"] = None
    profile["compute"]["int8"]["ops_per_s"] = float("nan")
    bad = [f for f, ok in profile_fields(profile, ["float32", "int8"]).items() if not ok]
    assert bad == ["device_copy_gbps", "compute.int8"]


# ---- against the real worker -------------------------------------------------------------------
@subprocess_test
def test_transfer_both_ways_detects_a_corrupted_payload_and_keeps_serving(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv) as c:
        sent = os.urandom(5000)
        digest = hashlib.sha256(sent).hexdigest()
        r = c.request("link.transfer", {"payload": sent, "sha256": digest, "reply_bytes": 4000})
        assert r["intact"] and r["received_sha256"] == digest and r["received_bytes"] == 5000
        assert check_reply(sent, digest, 4000, r) == (True, True)
        # Corrupted after the host digested it (one bit): the worker must say so.
        damaged = sent[:100] + bytes([sent[100] ^ 0x10]) + sent[101:]
        r = c.request("link.transfer", {"payload": damaged, "sha256": digest, "reply_bytes": 0})
        assert r["intact"] is False and r["received_sha256"] != digest
        assert check_reply(sent, digest, 0, r)[0] is False
        # Truncated in transit: also not intact.
        r = c.request("link.transfer", {"payload": sent[:-10], "sha256": digest})
        assert r["intact"] is False and r["received_bytes"] == 4990


@subprocess_test
def test_bad_transfer_and_profile_params_are_named_errors(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv) as c:
        limit = max_payload_bytes(c.hello.capabilities.max_frame_bytes)
        cases = [
            ("link.transfer", {"payload": b"abc"}, "sha256 is required"),
            ("link.transfer", {"payload": b"abc", "sha256": "xyz"}, "64 hex digits"),
            ("link.transfer", {"reply_bytes": -1}, "reply_bytes must not be negative"),
            ("link.transfer", {"reply_bytes": limit + 1}, "split the transfer"),
            ("link.transfer", {"checksum": "crc"}, "unknown field"),
            ("device.capability_profile", {"device": "cuda:42"}, "no device 'cuda:42'"),
            ("device.capability_profile", {"min_matmul_n": 512, "max_matmul_n": 256}, "min_matmul_n"),
            ("device.capability_profile", {"repeats": 0}, "repeats"),
        ]
        for op, params, words in cases:
            with pytest.raises(WorkerError) as err:
                c.request(op, params)
            assert err.value.code == "INVALID_PARAMS" and words in err.value.message, (op, params, err.value)
        assert c.request("ping", {"payload": "still here"})["payload"] == "still here"
        assert len(base64.b64decode(c.request("link.transfer", {"reply_bytes": limit})["payload"])) == limit


@subprocess_test
def test_capability_profile_of_the_cpu_is_measured_and_complete(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv) as c:
        found = c.request("discover_devices", timeout=120.0)["devices"]
        cpu = next(d for d in found if d["kind"] == "cpu")
        p = c.request("device.capability_profile", {"device": cpu["id"], "bandwidth_bytes": 1 << 20,
                                                    "max_matmul_n": 256, "min_kernel_s": 0.0, "repeats": 1},
                      timeout=120.0)
        assert p["device"]["id"] == cpu["id"] and p["errors"] == []
        assert "float32" in p["dtypes"] and p["compute"]["float32"]["kernel"] == "matmul"
        fields = profile_fields(p, cpu["dtypes"])
        assert all(fields.values()), [f for f, ok in fields.items() if not ok]


@subprocess_test
def test_data_transfer_splits_a_stream_into_frames_the_worker_accepts(worker_argv: list[str]) -> None:
    # A worker with a 64 KiB frame limit and 200 KiB payloads: every payload needs 4 frames.
    argv = [*worker_argv, "--max-frame-bytes", str(1 << 16)]
    ctx = _ctx(argv, {"mode": "stream", "duration_s": 1.0, "window_s": 0.5, "payload_kib": 200, "in_flight": 3})
    data_transfer(ctx)
    rec = ctx.recorder
    assert rec.notes["t_frame"]["chunk_bytes"] == max_payload_bytes(1 << 16) < 200 * 1024
    errors = rec.values("transfer_error")
    assert errors and set(errors) == {0.0} and len(errors) == 2 * rec.notes["t_payloads"]
    windows = _labels(rec, "transfer_throughput_mbps")
    assert sorted({(w["direction"], w["window"]) for w in windows}) == [("down", 0), ("down", 1), ("up", 0), ("up", 1)]
    assert all(v > 0 for v in rec.values("transfer_throughput_mbps"))
    # No chunk exceeded what fits in one frame (the worker would have refused it whole).
    assert max(lab["chunk_bytes"] for lab in _labels(rec, "transfer_round_trip_s")) == max_payload_bytes(1 << 16)


@subprocess_test
def test_data_transfer_count_mode_records_one_sample_per_payload_and_direction(worker_argv: list[str]) -> None:
    ctx = _ctx(worker_argv, {"mode": "count", "transfers": 25, "payload_kib": 4})
    data_transfer(ctx)
    assert sorted(lab["direction"] for lab in _labels(ctx.recorder, "transfer_error")) == ["down"] * 25 + ["up"] * 25
    assert set(ctx.recorder.values("transfer_error")) == {0.0}
    with pytest.raises(ValueError, match="mode"):
        data_transfer(_ctx(worker_argv, {"mode": "burst", "payload_kib": 4}))


@subprocess_test
def test_reconnection_replaces_a_broken_worker_which_serves_again(worker_argv: list[str]) -> None:
    ctx = _ctx(worker_argv, {"breaks": 2, "break_methods": ["kill_worker", "close_pipes"], "recovery_window_s": 20})
    reconnection(ctx)
    rec = ctx.recorder
    assert rec.values("reconnection_failed") == [0.0, 0.0]
    assert [lab["method"] for lab in _labels(rec, "reconnection_s")] == ["kill_worker", "close_pipes"]
    detection, recovery = rec.values("break_detection_s"), rec.values("reconnection_s")
    assert len(detection) == 2 and all(d <= r for d, r in zip(detection, recovery, strict=True))
    assert rec.values("break_requests_lost") == [0.0, 0.0]
    with pytest.raises(ValueError, match="break_methods"):
        reconnection(_ctx(worker_argv, {"breaks": 1, "break_methods": ["unplug"], "recovery_window_s": 5}))


@subprocess_test
def test_connection_reliability_counts_each_attempt(worker_argv: list[str]) -> None:
    ctx = _ctx(worker_argv, {"connections": 3})
    connection_reliability(ctx)
    assert ctx.recorder.values("connection_ok") == [1.0, 1.0, 1.0]
    assert len(ctx.recorder.values("connection_time_s")) == 3
    # A worker that dies before its handshake: each attempt is a failure, named by stage.
    broken = _ctx([sys.executable, "-c", "import sys; sys.exit(3)"], {"connections": 2})
    connection_reliability(broken)
    assert broken.recorder.values("connection_ok") == [0.0, 0.0]
    assert {lab["failed_stage"] for lab in _labels(broken.recorder, "connection_ok")} == {"handshake"}
