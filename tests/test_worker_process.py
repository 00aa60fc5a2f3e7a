"""The real worker process over real pipes: round trips, every bad input, stdout hygiene, exits."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.host import WorkerClient, WorkerError
from workers.host.command import bundled_worker_command

pytestmark = pytest.mark.subprocess


class RawWorker:
    """The worker on raw pipes, to send exactly the bytes a test wants."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([*bundled_worker_command(), "--heartbeat-interval", "30", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.hello = self.read()
        assert self.hello["type"] == "hello"

    def send(self, data: bytes) -> None:
        assert self.proc.stdin
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read_any(self) -> dict:
        assert self.proc.stdout
        line = self.proc.stdout.readline()
        assert line, "worker closed stdout"
        return json.loads(line)  # every line the worker writes must be JSON

    def read(self) -> dict:
        """The next message that is not a log event (warnings travel as log events too)."""
        while True:
            msg = self.read_any()
            if not (msg["type"] == "event" and msg["event"] == "log"):
                return msg

    def close(self) -> tuple[int, bytes]:
        assert self.proc.stdin
        self.proc.stdin.close()
        code = self.proc.wait(10)
        assert self.proc.stderr
        return code, self.proc.stderr.read()


@pytest.fixture
def raw():
    w = RawWorker("--max-frame-bytes", "4096", "--allow-fault-injection")
    yield w
    if w.proc.poll() is None:
        w.proc.kill()
        w.proc.wait()


def test_handshake_announces_protocol_operations_and_pid(raw: RawWorker) -> None:
    h = raw.hello
    assert h["protocol"] == 1 and h["pid"] == raw.proc.pid and h["worker_id"]
    ops = {o["name"]: o for o in h["capabilities"]["operations"]}
    assert ops["ping"]["control"] and ops["discover_devices"]["idempotent"] and "fault.crash" in ops
    assert h["capabilities"]["max_frame_bytes"] == 4096


@pytest.mark.parametrize(("frame", "code", "rid", "words"), [
    (b"{not json}\n", "PARSE_ERROR", None, "malformed JSON"),
    (b"x" * 5000 + b"\n", "FRAME_TOO_LARGE", None, "5000 bytes"),
    (b'{"type":"request","id":1,"op":"warp_drive"}\n', "UNKNOWN_OPERATION", 1, "warp_drive"),
    (b'{"type":"request","id":2,"op":"ping","params":{"payload":5}}\n', "INVALID_PARAMS", 2, "payload"),
    (b'{"type":"request","id":3,"op":"ping","priority":"urgent"}\n', "INVALID_MESSAGE", 3, "priority"),
    (b'{"type":"request","id":4,"op":"ping","priority":12}\n', "INVALID_MESSAGE", 4, "0..9"),
    (b'{"type":"request","id":5,"op":"ping","deadline_ms":-1}\n', "INVALID_MESSAGE", 5, "deadline_ms"),
    (b'{"type":"request","op":"ping"}\n', "INVALID_MESSAGE", None, "id"),
    (b'"just a string"\n', "INVALID_MESSAGE", None, "JSON object"),
])
def test_bad_input_is_answered_and_the_worker_keeps_serving(raw: RawWorker, frame: bytes, code: str,
                                                            rid: object, words: str) -> None:
    raw.send(frame)
    answer = raw.read()
    assert answer["type"] == "response" and answer["ok"] is False and answer["id"] == rid
    assert answer["error"]["code"] == code and words in answer["error"]["message"]
    raw.send(b'{"type":"request","id":"after","op":"ping","params":{"payload":"still here"}}\n')
    assert raw.read() == {"type": "response", "id": "after", "ok": True, "result": {"payload": "still here"}}


def test_stdout_noise_from_native_code_never_reaches_the_protocol(raw: RawWorker) -> None:
    raw.send(b'{"type":"request","id":1,"op":"fault.stdout_noise","params":{"text":"0.00%\\n"}}\n')
    assert raw.read() == {"type": "response", "id": 1, "ok": True, "result": {"written": 6}}
    raw.send(b'{"type":"request","id":2,"op":"ping"}\n')
    assert raw.read()["id"] == 2
    code, stderr = raw.close()
    assert code == 0 and b"0.00%" in stderr  # it went to the log instead


def test_eof_finishes_queued_work_then_exits_zero(raw: RawWorker) -> None:
    raw.send(b'{"type":"request","id":1,"op":"fault.sleep","params":{"seconds":0.2,"steps":1}}\n'
             b'{"type":"request","id":2,"op":"echo","params":{"payload":"queued"}}\n')
    assert raw.proc.stdin
    raw.proc.stdin.close()
    got = [raw.read() for _ in range(3)]
    assert [m["type"] for m in got] == ["event", "response", "response"]
    assert got[2]["result"] == {"payload": "queued"}
    assert raw.proc.wait(10) == 0


def test_shutdown_request_answers_fails_queued_and_exits_zero(raw: RawWorker) -> None:
    raw.send(b'{"type":"request","id":1,"op":"fault.sleep","params":{"seconds":0.4,"steps":2}}\n')
    assert raw.read()["type"] == "event"  # request 1 is running
    raw.send(b'{"type":"request","id":2,"op":"echo"}\n'
             b'{"type":"request","id":3,"op":"shutdown"}\n')
    got = {}
    t0 = time.monotonic()
    while len(got) < 3 and time.monotonic() - t0 < 10:
        m = raw.read()
        if m["type"] == "response":
            got[m["id"]] = m
    assert got[3]["ok"] and got[1]["ok"]  # the running request finished
    assert got[2]["error"]["code"] == "SHUTTING_DOWN" and got[2]["error"]["retryable"]
    assert raw.proc.wait(10) == 0


def test_priority_orders_queued_work_and_deadline_expires_in_queue(raw: RawWorker) -> None:
    raw.send(b'{"type":"request","id":"busy","op":"fault.sleep","params":{"seconds":0.4,"steps":2}}\n')
    assert raw.read()["type"] == "event"  # busy is running; the rest queue behind it
    raw.send(b'{"type":"request","id":"low","op":"echo","priority":9}\n'
             b'{"type":"request","id":"high","op":"echo","priority":0}\n'
             b'{"type":"request","id":"late","op":"echo","priority":0,"deadline_ms":50}\n')
    order = []
    while len(order) < 4:
        m = raw.read()
        if m["type"] == "response":
            order.append((m["id"], m["ok"], (m.get("error") or {}).get("code")))
    assert [o[0] for o in order] == ["busy", "high", "late", "low"]
    assert order[2] == ("late", False, "DEADLINE_EXCEEDED")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(min_size=1, max_size=200).filter(lambda b: b"\n" not in b and b.strip()),
                min_size=1, max_size=5))
def test_arbitrary_bytes_always_get_an_answer(raw: RawWorker, lines: list[bytes]) -> None:
    for line in lines:
        raw.send(line + b"\n")
        answer = raw.read()
        assert answer["type"] == "response"
    raw.send(b'{"type":"request","id":"alive","op":"ping"}\n')
    assert raw.read()["id"] == "alive"


def test_client_round_trip_progress_timeout_and_cancel(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        assert c.request("ping", {"payload": "é" * 100}) == {"payload": "é" * 100}
        events = []
        c.request("fault.sleep", {"seconds": 0.2, "steps": 4}, on_event=events.append)
        assert [e.data["step"] for e in events] == [1, 2, 3, 4]
        with pytest.raises(WorkerError) as info:
            c.request("fault.sleep", {"seconds": 5.0}, timeout=0.3)
        assert info.value.code in ("DEADLINE_EXCEEDED", "TIMEOUT")
        pending = c.submit("fault.sleep", {"seconds": 5.0, "steps": 50})
        time.sleep(0.1)
        assert c.request("cancel", {"target": pending.id})["state"] == "running-cancel-requested"
        assert pending.wait(2)
        with pytest.raises(WorkerError, match="CANCELLED"):
            pending.result()
        assert c.request("status")["protocol_errors"] == 0


def test_cancelling_a_queued_request_answers_at_once(raw: RawWorker) -> None:
    raw.send(b'{"type":"request","id":"busy","op":"fault.sleep","params":{"seconds":1.0,"steps":2}}\n')
    assert raw.read()["type"] == "event"
    raw.send(b'{"type":"request","id":"q","op":"echo"}\n'
             b'{"type":"request","id":"c","op":"cancel","params":{"target":"q"}}\n')
    t0 = time.monotonic()
    first, second = raw.read(), raw.read()
    assert time.monotonic() - t0 < 0.4  # long before busy ends
    assert {first["id"], second["id"]} == {"q", "c"}
    answers = {first["id"]: first, second["id"]: second}
    assert answers["q"]["error"]["code"] == "CANCELLED" and answers["c"]["result"]["state"] == "queued-cancelled"
    m = raw.read()
    while m["type"] != "response":
        m = raw.read()
    assert m["id"] == "busy" and m["ok"]  # and "q" is never answered twice


def test_worker_warnings_reach_the_host_as_log_events(raw: RawWorker) -> None:
    raw.send(b"not json\n")
    got = [raw.read_any(), raw.read_any()]
    kinds = {m["type"] for m in got}
    assert kinds == {"event", "response"}
    log_event = next(m for m in got if m["type"] == "event")
    assert log_event["event"] == "log" and log_event["data"]["level"] == "WARNING"
    assert "PARSE_ERROR" in log_event["data"]["message"]
