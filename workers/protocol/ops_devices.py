"""Device-domain operations: simulated devices, hot add/removal, disconnection, health monitoring.

Simulated devices stand in for accelerators the testbed does not have: each has a name, a memory
size (its memory manager's budget) and a real *backing* device that runs its work, so the spec's
5- to 100-device cases run on one machine with real tensors and real compute. Device changes
(added, removed, disconnected, reconnected, draining, restored) are announced as ``status``
events with ``domain: "device"``; health samples and alerts too (``kind: "health"`` / ``"alert"``).
"""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec

from workers.protocol.opspec import OperationSpec

DisconnectMode = Literal["hardware_disconnect", "driver_failure", "power_failure"]


class SimulatedDeviceSpec(msgspec.Struct, forbid_unknown_fields=True):
    name: str  # unique; letters, digits and ._:- ; not a real device's name ("cpu", "cuda:N")
    memory_bytes: int  # > 0: the device's memory, its memory manager's budget
    backing: str = "cpu"  # the real device that runs its work: "cpu" or "cuda:N"
    dtypes: list[str] = msgspec.field(default_factory=lambda: ["float32"])  # claimed; discovery verifies
    compute_units: int = 1  # > 0; reported, and scales nothing else


class DevicesConfigureParams(msgspec.Struct, forbid_unknown_fields=True):
    devices: list[SimulatedDeviceSpec]  # replaces every simulated device (each removal announced)


class NoParams(msgspec.Struct, forbid_unknown_fields=True):
    pass


class DeviceNameParams(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class DisconnectParams(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    # hardware_disconnect: gone from enumeration; driver_failure: listed as driver_error, unusable;
    # power_failure: gone, and its health sensors stop reporting. All three lose the device's memory.
    mode: DisconnectMode = "hardware_disconnect"


class HealthParams(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    # Sensor readings to set (a simulated device's sensors): temperature_c, power_w,
    # ecc_correctable, ecc_uncorrectable, fan_pct. Unknown keys are refused.
    readings: dict[str, float]


class MonitorParams(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool = True
    interval_s: float = 1.0  # >= 0.05


class DeviceRunParams(msgspec.Struct, forbid_unknown_fields=True):
    device: str  # "cpu", "cuda:N" or a simulated device
    workload: Literal["inference", "load"] = "inference"
    iterations: int = 10  # inference: matmuls of matrix_n x matrix_n on the backing device
    matrix_n: int = 128
    working_set_bytes: int = 0  # inference: held through the device's memory manager while running
    weights_bytes: int = 0  # load: allocated and written in 8 chunks, kept as a loaded model
    model: str = "model"  # load: the name it is kept under (replaced if loaded again)


class DeviceRunResult(msgspec.Struct):
    device: str
    workload: str
    iterations: int
    queued_s: float  # waiting for the device's executor
    run_s: float
    checksum: float  # of the last product (inference) or of the written weights (load)


class DeviceChangeResult(msgspec.Struct):
    name: str
    change: str  # added, removed, disconnected, reconnected
    seq: int  # the change's sequence number, also in its status event
    released_allocations: int = 0  # memory the change released (removal, disconnection)
    released_bytes: int = 0
    failed_requests: int = 0  # queued or running work failed with DEVICE_LOST


class DevicesConfigureResult(msgspec.Struct):
    devices: list[dict[str, Any]]
    removed: list[str]


class DeviceListResult(msgspec.Struct):
    devices: list[dict[str, Any]]  # every device the runtime knows, with state, health and load
    memory_managers: list[str]  # devices holding a memory manager (a removed device must not)
    change_seq: int  # the last change's sequence number


class MonitorResult(msgspec.Struct):
    enabled: bool
    interval_s: float
    samples: int
    mean_cost_ms: Union[float, None]  # monitor thread CPU time per sample


SPECS: tuple[OperationSpec, ...] = (
    OperationSpec("devices.configure", DevicesConfigureParams, DevicesConfigureResult, idempotent=True, control=True,
                  description="Replace the simulated devices (validated as a whole: duplicate names, sizes <= 0 and "
                              "missing backing devices are refused before anything changes)."),
    OperationSpec("devices.add", SimulatedDeviceSpec, DeviceChangeResult, idempotent=False, control=True,
                  description="Hot-add a simulated device; announced as a status event (change: added)."),
    OperationSpec("devices.remove", DeviceNameParams, DeviceChangeResult, idempotent=False, control=True,
                  description="Hot-remove a simulated device: its queued and running work fails with DEVICE_LOST, "
                              "its memory is released; announced (change: removed)."),
    OperationSpec("devices.disconnect", DisconnectParams, DeviceChangeResult, idempotent=False, control=True,
                  description="Inject a disconnection (hardware, driver or power failure) on a simulated device."),
    OperationSpec("devices.reconnect", DeviceNameParams, DeviceChangeResult, idempotent=False, control=True,
                  description="Bring a disconnected simulated device back, empty; announced (change: reconnected)."),
    OperationSpec("devices.set_health", HealthParams, DeviceChangeResult, idempotent=True, control=True,
                  description="Set a simulated device's sensor readings; a critical reading alerts at once and "
                              "drains the device (automatic intervention) until it is healthy again."),
    OperationSpec("devices.list", NoParams, DeviceListResult, idempotent=True, control=True,
                  description="Every device with state, health, queue and memory; answered ahead of queued work."),
    OperationSpec("devices.monitor", MonitorParams, MonitorResult, idempotent=True, control=True,
                  description="Switch health monitoring on or off and set its interval (health events per tick)."),
    OperationSpec("device.run", DeviceRunParams, DeviceRunResult, idempotent=True,
                  description="Run a compute workload (inference: matmuls; load: write model weights) on one "
                              "device's own executor; fails with DEVICE_LOST if the device goes away under it."),
)
