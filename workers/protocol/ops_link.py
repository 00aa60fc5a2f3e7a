"""Host-worker link operations (4.1 connection, reconnection and data transfer benchmarks),
and the measured capability profile of one device (4.1 comprehensive profiling).

Payloads travel as JSON strings (msgspec encodes ``bytes`` as base64), inside one frame each:
``max_payload_bytes`` says how much raw data fits in a frame of the worker's announced limit,
and both sides use it, so a stream is split into frames the worker accepts.
"""

from __future__ import annotations

from typing import Union

import msgspec

from workers.protocol.messages import DeviceInfo
from workers.protocol.opspec import OperationSpec

# Room left in a frame for the request or response envelope around the payload (id, op,
# the digests, deadline): generous, because a frame over the limit is refused whole.
FRAME_ENVELOPE_BYTES = 4096
DIGEST_HEX_LEN = 64  # sha256


def max_payload_bytes(max_frame_bytes: int) -> int:
    """Raw bytes of one payload that fit, base64-encoded, in a frame of ``max_frame_bytes``."""
    room = max_frame_bytes - FRAME_ENVELOPE_BYTES
    if room < 4:
        raise ValueError(f"a frame limit of {max_frame_bytes} bytes leaves no room for a payload")
    return (room // 4) * 3  # base64: 4 characters per 3 bytes


class LinkTransferParams(msgspec.Struct, forbid_unknown_fields=True):
    payload: bytes = b""  # host -> worker (base64 in JSON)
    sha256: str = ""  # hex digest of ``payload`` as the host sent it; required with a payload
    reply_bytes: int = 0  # worker -> host: send back this many fresh random bytes


class LinkTransferResult(msgspec.Struct):
    received_bytes: int  # length of the payload as the worker decoded it
    received_sha256: str  # its digest, as the worker computed it
    intact: bool  # received_sha256 == the host's sha256 (True when no payload was sent)
    payload: bytes  # worker -> host, ``reply_bytes`` long
    sha256: str  # digest of ``payload`` as the worker sent it


class CapabilityProfileParams(msgspec.Struct, forbid_unknown_fields=True):
    device: str = "cpu:0"  # a device id as discover_devices reports it
    bandwidth_bytes: int = 64 << 20  # size of the buffers whose copies are timed
    min_matmul_n: int = 256  # operands start n x n, doubling up to max_matmul_n
    max_matmul_n: int = 4096
    min_kernel_s: float = 0.005  # grow the operands until one kernel takes this long (launch cost, wake-ups)
    repeats: int = 3  # each measurement is the best of this many


class DtypeThroughput(msgspec.Struct):
    kernel: str  # "matmul" (2 n^3 operations) or "elementwise" (an add: n^2 operations)
    size: int  # n of the n x n operands
    ops_per_s: float


class CapabilityProfileResult(msgspec.Struct):
    device: DeviceInfo  # what discovery reports for it (memory re-read now)
    dtypes: list[str]  # dtypes a kernel actually ran in, on this device
    compute: dict[str, DtypeThroughput]  # per dtype in ``dtypes``
    host_to_device_gbps: Union[float, None]  # GB/s (1e9 bytes), pinned host memory on CUDA
    device_to_host_gbps: Union[float, None]
    device_copy_gbps: Union[float, None]  # a copy within the device's memory (read + write counted once)
    errors: list[str]  # measurements that failed, with the reason; their fields are None or absent
    profile_ms: float  # inside the worker, monotonic clock
    phase_ms: dict[str, float] = {}  # where profile_ms went: "discovery", "bandwidth", "compute.<dtype>"


SPECS: tuple[OperationSpec, ...] = (
    OperationSpec("link.transfer", LinkTransferParams, LinkTransferResult, idempotent=True,
                  description="Checked transfer both ways: verify the host's payload against its sha256 "
                              "(answer intact true/false), send back reply_bytes random bytes with their sha256. "
                              "Payloads are limited to what fits in one frame (see max_payload_bytes)."),
    OperationSpec("device.capability_profile", CapabilityProfileParams, CapabilityProfileResult, idempotent=True,
                  description="A device's full capability profile, measured now: discovery's fields, dtypes "
                              "verified by running kernels, throughput per dtype (matmul, else elementwise), "
                              "host-device and on-device copy bandwidth."),
)
