"""The runtime under test: worker processes, their protocol, and the host side that drives them.

Usable without Dagster: ``python -m workers`` starts a worker; ``workers.host`` spawns,
supervises and talks to workers.
"""

__version__ = "0.1.0"
