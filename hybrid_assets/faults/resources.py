"""What the runtime holds, so an experiment can tell whether it came back to baseline."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

from workers.host.pool import WorkerPool


@dataclass(frozen=True)
class ResourceSnapshot:
    workers_alive: int
    worker_rss_bytes: int
    host_open_fds: int
    host_threads: int
    host_children: int  # live child processes of the host (leaked workers show here)

    def compare(self, baseline: ResourceSnapshot, rss_tolerance: float = 0.25) -> list[str]:
        """What did not come back; empty when everything did."""
        problems = []
        if self.workers_alive < baseline.workers_alive:
            problems.append(f"{self.workers_alive} workers alive, {baseline.workers_alive} before")
        if self.host_children > baseline.host_children:
            problems.append(f"{self.host_children} child processes, {baseline.host_children} before")
        if self.host_open_fds > baseline.host_open_fds:
            problems.append(f"{self.host_open_fds} open files in the host, {baseline.host_open_fds} before")
        limit = baseline.worker_rss_bytes * (1 + rss_tolerance)
        if baseline.worker_rss_bytes and self.worker_rss_bytes > limit:
            problems.append(f"worker RSS {self.worker_rss_bytes >> 20} MiB, {baseline.worker_rss_bytes >> 20} MiB "
                            f"before (+{rss_tolerance:.0%} allowed)")
        return problems


def snapshot(pool: WorkerPool) -> ResourceSnapshot:
    rss = 0
    alive = 0
    for client in pool.clients:
        if client.pid is None or not client.alive:
            continue
        try:
            rss += psutil.Process(client.pid).memory_info().rss
            alive += 1
        except psutil.NoSuchProcess:
            continue
    me = psutil.Process()
    children = [c for c in me.children() if c.status() != psutil.STATUS_ZOMBIE]
    return ResourceSnapshot(alive, rss, len(os.listdir("/proc/self/fd")), me.num_threads(), len(children))
