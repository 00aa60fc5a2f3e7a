"""Build the model root offline: ``python -m workers.models.generate --root .models --profile smoke``.

A profile names a set of models (tiny pipelines, a ControlNet and a LoRA on the first, synthetic
weight files for the loading benchmarks). A model already built from the same recipe is kept;
the manifest records every file's sha256 and size and the recipe, so the store can verify and
rebuild. Building holds the manifest lock, so parallel runners never build the same model twice.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.models import manifest as mf
from workers.models.integrity import sha256_file
from workers.models.recipes import RECIPES
from workers.models.safety_recipe import SAFETY_SOURCE, build_safety_classifier

RECIPES.setdefault("safety_classifier", build_safety_classifier)  # the stand-in safety classifier (issue 6)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str
    source: dict[str, Any]
    depends_on: tuple[str, ...] = field(default=())


def tiny_sd(name: str, seed: int, channels: tuple[int, int] = (32, 64)) -> ModelSpec:
    return ModelSpec(name, "sd_pipeline", {"seed": seed, "channels": list(channels)})


def synthetic(mib: int, seed: int | None = None) -> ModelSpec:
    return ModelSpec(f"synthetic-{mib}m", "synthetic", {"seed": mib if seed is None else seed, "mib": mib})


BASE = "tiny-sd-a"
_SMOKE = [
    tiny_sd(BASE, 1), tiny_sd("tiny-sd-b", 2), tiny_sd("tiny-sd-c", 3, (64, 128)),
    ModelSpec("tiny-controlnet-a", "controlnet", {"seed": 11, "base": BASE}, (BASE,)),
    ModelSpec("tiny-lora-a", "lora", {"seed": 12, "base": BASE, "rank": 4}, (BASE,)),
    synthetic(16), synthetic(64),
    ModelSpec("safety-patterns", "safety_classifier", SAFETY_SOURCE),
]
_STANDARD = [*_SMOKE, tiny_sd("tiny-sd-d", 4), tiny_sd("tiny-sd-e", 5, (64, 128)), synthetic(256), synthetic(1024)]
PROFILES: dict[str, list[ModelSpec]] = {
    "smoke": _SMOKE,
    "standard": _STANDARD,
    "spec": [*_STANDARD, synthetic(2048), synthetic(5120), synthetic(10240)],
    # SD1.5's shapes in fp16 (about 2 GB): for GPU testbeds; built only on request.
    "gpu": [ModelSpec("sd15-shaped-fp16", "sd_pipeline", {"seed": 15, "shape": "sd15", "dtype": "float16"})],
}


def _hash_tree(directory: Path) -> dict[str, mf.FileEntry]:
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        files[rel] = mf.FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)
    return files


def build_into(root: Path, spec_kind: str, source: dict[str, Any], dest: Path) -> dict[str, mf.FileEntry]:
    """Run a recipe into ``dest`` (which must not exist) and hash what it wrote."""
    if spec_kind not in RECIPES:
        raise mf.ManifestError(f"no recipe for kind {spec_kind!r}; known: {sorted(RECIPES)}")
    dest.mkdir(parents=True)
    try:
        RECIPES[spec_kind](dest, root, **source)
        return _hash_tree(dest)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _is_current(root: Path, doc: mf.ManifestDoc, spec: ModelSpec) -> bool:
    entry = doc.models.get(spec.name)
    if entry is None or entry.kind != spec.kind or entry.source != spec.source:
        return False
    return all((root / entry.path / rel).is_file() and (root / entry.path / rel).stat().st_size == f.bytes
               for rel, f in entry.files.items())


def build(root: Path, specs: list[ModelSpec], *, force: bool = False, log: Any = None) -> list[str]:
    """Build what is missing or stale; returns the names built. Dependencies first."""
    built: list[str] = []
    root.mkdir(parents=True, exist_ok=True)
    with mf.locked(root):
        try:
            doc = mf.read(root)
        except mf.ManifestError:
            if (root / mf.MANIFEST_NAME).exists():
                raise
            doc = mf.ManifestDoc(format=mf.FORMAT, models={})
        for spec in specs:
            missing = [d for d in spec.depends_on if d not in doc.models and d not in {s.name for s in specs}]
            if missing:
                raise mf.ManifestError(f"model {spec.name!r} depends on {missing}: neither built nor requested")
            if not force and _is_current(root, doc, spec):
                continue
            started = time.perf_counter()
            staging = root / ".build" / spec.name
            shutil.rmtree(staging, ignore_errors=True)
            files = build_into(root, spec.kind, spec.source, staging)
            final = root / spec.name
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
            doc.models[spec.name] = mf.ModelEntry(kind=spec.kind, path=spec.name, files=files,
                                                  depends_on=list(spec.depends_on), source=spec.source)
            mf.write(root, doc)  # after each model: an interrupted build keeps what it finished
            built.append(spec.name)
            if log:
                mib = sum(f.bytes for f in files.values()) / 2**20
                log(f"built {spec.name} ({spec.kind}, {mib:.1f} MiB) in {time.perf_counter() - started:.2f} s")
    return built


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="smoke")
    ap.add_argument("--synthetic-mib", type=int, action="append", default=[], help="also build a synthetic model")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    specs = PROFILES[args.profile] + [synthetic(m) for m in args.synthetic_mib]
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    built = build(args.root, specs, force=args.force, log=lambda m: print(m, flush=True))
    print(f"{len(built)} built, {len(specs) - len(built)} already current in {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
