"""The worker side: the process the host spawns (``python -m workers``)."""
