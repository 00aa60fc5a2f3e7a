"""Files generated from code and committed (the protocol schema, the coverage report):
one ``--write`` / ``--check`` command line for all of them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def generated_file_main(path: Path, render: Callable[[], str], regenerate: str, description: str,
                        argv: list[str] | None = None) -> int:
    """``--write`` writes ``render()`` to ``path``; ``--check`` exits 1 if the file differs."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawTextHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true")
    group.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
        return 0
    current = path.read_text() if path.exists() else ""
    if current != text:
        print(f"{path} is stale: run `{regenerate}`", file=sys.stderr)
        return 1
    print(f"{path} is up to date")
    return 0
