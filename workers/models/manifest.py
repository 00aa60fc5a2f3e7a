"""The manifest of a model root: every model's kind, files (sha256 and size), dependencies and
the recipe that rebuilds it from source.

``manifest.json`` sits at the root. Paths in it are relative and must stay inside the root
(checked on load: an absolute path, ``..`` or a symlink escaping the root is refused by name).
Only safetensors weights are admitted; a weights file with a pickle suffix is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

MANIFEST_NAME = "manifest.json"
FORMAT = 1
KINDS = frozenset({"sd_pipeline", "controlnet", "lora", "synthetic", "safety_classifier"})
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})


class ManifestError(ValueError):
    """The manifest or a model's entry in it is unusable; the message names what and where."""


class FileEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sha256: str
    bytes: int


class ModelEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: str
    path: str
    files: dict[str, FileEntry]
    depends_on: list[str] = []
    source: dict[str, Any] = {}

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files.values())

    def weight_files(self) -> list[str]:
        return sorted(rel for rel in self.files if rel.endswith(".safetensors"))


class ManifestDoc(msgspec.Struct, forbid_unknown_fields=True):
    format: int
    models: dict[str, ModelEntry]


def _check_relative(what: str, rel: str) -> None:
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise ManifestError(f"{what}: path {rel!r} must be relative and stay inside the model root")


def safe_join(root: Path, *parts: str) -> Path:
    """``root/parts`` resolved, refused when it escapes the root (``..``, absolute, symlinks)."""
    for part in parts:
        _check_relative("path", part)
    root_resolved = root.resolve()
    target = root_resolved.joinpath(*parts).resolve()
    if target != root_resolved and root_resolved not in target.parents:
        raise ManifestError(f"path {'/'.join(parts)!r} resolves to {target}, outside the model root {root_resolved}")
    return target


def validate(doc: ManifestDoc, where: str = MANIFEST_NAME) -> None:
    if doc.format != FORMAT:
        raise ManifestError(f"{where}: format {doc.format} is not supported (expected {FORMAT})")
    for name, entry in doc.models.items():
        label = f"{where}: model {name!r}"
        if not name or "/" in name or name.startswith("."):
            raise ManifestError(f"{where}: model name {name!r} must be a plain name")
        if entry.kind not in KINDS:
            raise ManifestError(f"{label}: kind {entry.kind!r} is not one of {sorted(KINDS)}")
        _check_relative(label, entry.path)
        if not entry.files:
            raise ManifestError(f"{label}: lists no files")
        for rel, f in entry.files.items():
            _check_relative(f"{label} file", rel)
            if PurePosixPath(rel).suffix.lower() in PICKLE_SUFFIXES:
                raise ManifestError(f"{label}: file {rel!r} is a pickle format; only safetensors weights are loaded")
            if len(f.sha256) != 64 or any(c not in "0123456789abcdef" for c in f.sha256):
                raise ManifestError(f"{label}: file {rel!r} sha256 {f.sha256!r} is not 64 lowercase hex digits")
            if f.bytes < 0:
                raise ManifestError(f"{label}: file {rel!r} has negative size {f.bytes}")
        for dep in entry.depends_on:
            if dep not in doc.models:
                raise ManifestError(f"{label}: depends on {dep!r}, which the manifest does not list")
    for name in doc.models:
        load_order(doc.models, [name])  # raises on a cycle


def known(names: Iterator[str] | list[str] | Mapping[str, object], limit: int = 20) -> str:
    """A bounded list of names for error messages (a root can hold hundreds of models)."""
    ordered = sorted(names)
    more = f" (+{len(ordered) - limit} more)" if len(ordered) > limit else ""
    return f"{ordered[:limit]}{more}"


def load_order(models: Mapping[str, ModelEntry], names: list[str]) -> list[str]:
    """Dependencies before dependents (depth first), each once; a cycle or unknown name is named."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name not in models:
            via = f" (needed by {chain[-1]!r})" if chain else ""
            raise ManifestError(f"unknown model {name!r}{via}; known: {known(models)}")
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ManifestError(f"dependency cycle: {' -> '.join((*chain, name))}")
        state[name] = 1
        for dep in models[name].depends_on:
            visit(dep, (*chain, name))
        state[name] = 2
        order.append(name)

    for n in names:
        visit(n, ())
    return order


def read(root: Path) -> ManifestDoc:
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in {root}: build the models with `make models`")
    try:
        doc = msgspec.json.decode(path.read_bytes(), type=ManifestDoc)
    except msgspec.DecodeError as exc:
        raise ManifestError(f"{path}: {exc}") from exc
    validate(doc, str(path))
    return doc


def write(root: Path, doc: ManifestDoc) -> None:
    """Atomic replace, so a reader never sees half a manifest."""
    validate(doc)
    tmp = root / f".{MANIFEST_NAME}.{os.getpid()}.tmp"
    data = msgspec.json.encode(doc)
    tmp.write_bytes(json.dumps(json.loads(data), indent=1, sort_keys=True).encode())
    os.replace(tmp, root / MANIFEST_NAME)


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """Serialise read-modify-write of the manifest across processes (parallel runners add models)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".manifest.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
