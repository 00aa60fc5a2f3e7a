"""``python -m workers``: a protocol-v1 worker on stdin/stdout."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from workers.protocol.messages import DEFAULT_MAX_FRAME_BYTES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    p.add_argument("--worker-id", default=None, help="name announced in the handshake")
    p.add_argument("--heartbeat-interval", type=float, default=1.0, metavar="SECONDS")
    p.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES)
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--allow-fault-injection", action="store_true",
                   help="serve fault.* operations and accept the --fault-* options (tests only)")
    p.add_argument("--fault-startup-delay", type=float, default=0.0, metavar="SECONDS",
                   help="sleep before the handshake (a slow-starting build)")
    p.add_argument("--fault-latency", type=float, default=0.0, metavar="SECONDS",
                   help="delay the handling of every incoming frame by this much (a slow build)")
    args = p.parse_args(argv)
    if (args.fault_startup_delay or args.fault_latency) and not args.allow_fault_injection:
        p.error("--fault-* options need --allow-fault-injection")
    if args.heartbeat_interval <= 0:
        p.error("--heartbeat-interval must be > 0")
    if args.max_frame_bytes < 1024:
        p.error("--max-frame-bytes must be at least 1024")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # stdout becomes the protocol's alone before anything else can print.
    from workers.runtime.stdio import claim_stdout

    protocol_out = claim_stdout()
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level.upper(),
        format="%(asctime)s worker[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    from workers.runtime.server import WorkerConfig, WorkerServer

    config = WorkerConfig(
        heartbeat_interval_s=args.heartbeat_interval, max_frame_bytes=args.max_frame_bytes,
        allow_fault_injection=args.allow_fault_injection, latency_s=args.fault_latency,
    )
    if args.worker_id:
        config.worker_id = args.worker_id
    if args.fault_startup_delay:
        time.sleep(args.fault_startup_delay)
    server = WorkerServer(config, sys.stdin.buffer, protocol_out)
    try:
        rc = server.serve()
    except KeyboardInterrupt:
        rc = 130
    # Work threads that outlived the shutdown grace period may still be inside torch; letting the
    # interpreter finalise under them aborts the process (SIGABRT, seen with a long device.run).
    # Every answer is written by now: flush and leave without finalising.
    logging.shutdown()
    for stream in (protocol_out, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
