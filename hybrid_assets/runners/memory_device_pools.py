"""1.1 device-specific memory allocation: a pool per device, a model load and inference requests in it.

Each round gives every device (simulated, backed by the CPU, each with its own memory manager)
a pool of activation blocks, loads a model's weights on it, places inference working sets from
the host on the device with the most free memory, and reads the managers' own accounting:
efficiency at the round's peak, fragmentation after half the working sets are freed, and any
allocation refused on one device while another had room for it.
"""

from __future__ import annotations

import random
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.device_load import MiB, sim_specs, start_worker
from workers.host.errors import WorkerError

METRICS = frozenset({"pool_allocation_ok", "allocation_efficiency_ratio", "fragmentation_ratio",
                     "misplaced_allocation_detected", "allocation_latency_s"})
BLOCK = 2 * MiB


def _free_bytes(stats: dict[str, Any]) -> int:
    return int(stats["budget_bytes"] - stats["used_bytes"])


def device_pool_allocation(ctx: RunnerContext) -> None:
    rounds = int(ctx.params["rounds"])
    per_round = int(ctx.params["requests_per_round"])
    n = max(2, int(ctx.params.get("simulated_devices", 2)))
    rng = random.Random(int(ctx.params.get("seed", 11)))
    rec = ctx.recorder
    with start_worker(ctx.worker_argv) as c:
        c.request("devices.configure", {"devices": sim_specs(n, memory_mib=160)})
        found = c.request("discover_devices", {"probe_dtypes": False}, timeout=120)
        devices = [d["id"] for d in found["devices"] if d["kind"] == "simulated"]
        pool = "activations"
        blocks = -(-per_round // len(devices))  # the system sizes each pool for its share of the requests
        for r in range(rounds):
            for dev in devices:
                ok = 1.0
                try:
                    if r == 0:
                        c.request("memory.pool_create", {"device": dev, "name": pool, "block_bytes": BLOCK,
                                                         "blocks": blocks})
                    probe = c.request("memory.allocate", {"device": dev, "sizes": [BLOCK], "pool": pool})
                    ok = 0.0 if probe["allocations"][0].get("error") else 1.0
                except WorkerError as exc:
                    ok = 0.0
                    rec.note(f"pool_error_{dev}_{r}", str(exc)[:200])
                rec.record("pool_allocation_ok", ok, "count", device=dev, round=r)
                c.request("device.run", {"device": dev, "workload": "load", "weights_bytes": 48 * MiB,
                                         "model": "tiny"}, timeout=60)
            held: dict[str, list[int]] = {dev: [] for dev in devices}
            for _ in range(per_round):
                stats = {dev: c.request("memory.stats", {"device": dev})["stats"] for dev in devices}
                size = rng.randint(3 * BLOCK // 4, BLOCK)  # working sets fill 75-100 % of a block
                dev = max(devices, key=lambda d: _free_bytes(stats[d]) + _pool_free(stats[d], pool))
                a = c.request("memory.allocate", {"device": dev, "sizes": [size], "pool": pool, "free": False,
                                                  "tag": f"round{r}"})["allocations"][0]
                refused = bool(a.get("error"))
                room_elsewhere = any(_pool_free(stats[d], pool) > 0 for d in devices if d != dev)
                rec.record("misplaced_allocation_detected", 1.0 if refused and room_elsewhere else 0.0, "count",
                           device=dev, round=r, **({"error": a["error"][:120]} if refused else {}))
                if not refused:
                    held[dev].append(a["id"])
                    rec.record("allocation_latency_s", a["latency_s"], "s", device=dev)
            for dev in devices:
                s = c.request("memory.stats", {"device": dev})["stats"]
                # live bytes over bytes reserved from the device, at the round's peak
                rec.record("allocation_efficiency_ratio", s["requested_bytes"] / s["used_bytes"], "ratio",
                           device=dev, round=r)
                victims = rng.sample(held[dev], len(held[dev]) // 2)
                after = c.request("memory.free", {"device": dev, "ids": victims})["stats"]
                rec.record("fragmentation_ratio", after["pools"][pool]["fragmentation"], "ratio", device=dev,
                           round=r)
                c.request("memory.free", {"device": dev, "tag": f"round{r}"})
        rec.note("devices", devices)
        rec.note("model_weights_mib", 48)


def _pool_free(stats: dict[str, Any], pool: str) -> int:
    return int(stats["pools"].get(pool, {}).get("free_blocks", 0))


RUNNERS = {"memory.device_pool_allocation": (METRICS, device_pool_allocation)}
