"""Load generation: arrival schedules, drivers, statistics, joined by request events.

Modules of one concern each, as locust splits its runners from its stats: ``schedule``
makes arrival times, ``driver`` fires requests and emits one ``RequestEvent`` per request,
``stats`` listens and summarises, ``ramp`` steps the load up to find the knee.
"""

from hybrid_assets.load.driver import EventHook, RequestEvent, run_closed_loop, run_open_loop
from hybrid_assets.load.schedule import burst_arrivals, poisson_arrivals
from hybrid_assets.load.stats import LoadStats, LoadSummary

__all__ = [
    "EventHook",
    "LoadStats",
    "LoadSummary",
    "RequestEvent",
    "burst_arrivals",
    "poisson_arrivals",
    "run_closed_loop",
    "run_open_loop",
]
