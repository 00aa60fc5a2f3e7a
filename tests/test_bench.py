"""The IPC benchmark measures both sides in one run and derives its ratios from them."""

from __future__ import annotations

import pytest

from workers.bench import ipc

pytestmark = pytest.mark.subprocess


def test_benchmark_reports_measured_figures_and_consistent_ratios() -> None:
    r = ipc.run(requests=200, spawns=2, crashes=1)
    for key in ("round_trips", "round_trips_pinned"):
        rt = r[key]
        assert rt["ping"]["n"] == rt["floor"]["n"] == 200
        assert rt["floor"]["p50_us"] > 0 and rt["ping"]["p99_us"] >= rt["ping"]["p50_us"]
        assert rt["ratio_p50_ping_to_floor"] == pytest.approx(rt["ping"]["p50_us"] / rt["floor"]["p50_us"])
    assert r["spawn_to_ready"]["p50_ms"] > 0
    assert r["crash_to_served"]["kill_to_served_p50_ms"] >= r["crash_to_served"]["backoff_s"] * 1e3
    assert "ping / floor" in ipc.render(r)
