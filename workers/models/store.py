"""The model store: the manifest's models on disk, verified before use, repaired when corrupt.

Repair tries a verified backup copy first (``.backup/<name>`` beside the models), then a rebuild
from the recipe recorded in the manifest; either way the result must hash to the manifest's
values before it replaces anything, so a repair never installs a different model.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from workers.models import manifest as mf
from workers.models.integrity import FileCheck, IntegrityError, check_bytes, check_file


class RepairFailed(ValueError):
    """Neither a backup nor a rebuild produced files matching the manifest."""


class ModelNotFound(KeyError):
    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class Repair:
    name: str
    how: str  # "backup" or "rebuild"
    seconds: float
    replaced: tuple[str, ...]  # files that were bad and are now good


class ModelStore:
    """One model root. Reads the manifest again when it changes on disk (runners add models)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._doc: mf.ManifestDoc | None = None
        self._stamp: tuple[int, int] | None = None

    def manifest(self) -> mf.ManifestDoc:
        path = self.root / mf.MANIFEST_NAME
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if self._doc is None or stamp != self._stamp:
            self._doc = mf.read(self.root)
            self._stamp = stamp
        return self._doc

    def names(self) -> list[str]:
        return sorted(self.manifest().models)

    def entry(self, name: str) -> mf.ModelEntry:
        models = self.manifest().models
        if name not in models:
            raise ModelNotFound(f"model {name!r} is not in {self.root / mf.MANIFEST_NAME}; known: {mf.known(models)}")
        return models[name]

    def load_order(self, names: list[str]) -> list[str]:
        return mf.load_order(self.manifest().models, names)

    def model_dir(self, name: str) -> Path:
        return mf.safe_join(self.root, self.entry(name).path)

    def file_path(self, name: str, rel: str) -> Path:
        entry = self.entry(name)
        if rel not in entry.files:
            raise ModelNotFound(f"model {name!r} has no file {rel!r}; it has {sorted(entry.files)}")
        return mf.safe_join(self.root, entry.path, rel)

    def verify(self, name: str, *, verify_hash: bool = True) -> list[FileCheck]:
        entry = self.entry(name)
        return [check_file(self.file_path(name, rel), f.sha256, f.bytes, verify_hash=verify_hash)
                for rel, f in sorted(entry.files.items())]

    def read_verified(self, name: str, rels: list[str] | None = None) -> dict[str, bytes]:
        """File contents, each checked against the manifest in memory (one read, hash included);
        raises ``IntegrityError`` naming the first bad file."""
        entry = self.entry(name)
        out: dict[str, bytes] = {}
        for rel in rels if rels is not None else sorted(entry.files):
            path = self.file_path(name, rel)
            data = path.read_bytes() if path.is_file() else b""
            f = entry.files[rel]
            check = (check_bytes(data, str(path), f.sha256, f.bytes) if path.is_file()
                     else check_file(path, f.sha256, f.bytes))  # reports MISSING with its detail
            if not check.ok:
                raise IntegrityError(check)
            out[rel] = data
        return out

    # ---- backup and repair ----------------------------------------------------------------
    def _backup_dir(self, name: str) -> Path:
        return mf.safe_join(self.root, ".backup", self.entry(name).path)

    def backup(self, name: str) -> Path:
        """Copy a verified model to the backup area (refused if the model itself is corrupt)."""
        bad = [c for c in self.verify(name) if not c.ok]
        if bad:
            raise IntegrityError(bad[0])  # a corrupt model is never backed up
        dest = self._backup_dir(name)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(self.model_dir(name), dest)
        return dest

    def has_backup(self, name: str) -> bool:
        return self._backup_dir(name).is_dir()

    def _good_files_in(self, name: str, directory: Path) -> list[str]:
        entry = self.entry(name)
        return [rel for rel, f in entry.files.items()
                if check_file(directory / rel, f.sha256, f.bytes).ok]

    def repair(self, name: str, *, allow_backup: bool = True, allow_rebuild: bool = True) -> Repair:
        """Replace the model's bad files with verified good ones; raises ``RepairFailed`` when
        neither the backup nor a rebuild hashes to the manifest."""
        started = time.perf_counter()
        entry = self.entry(name)
        bad = [c for c in self.verify(name) if not c.ok]
        target = self.model_dir(name)
        bad_rels = [Path(c.path).relative_to(target).as_posix() for c in bad]
        if not bad_rels:
            return Repair(name, "none", time.perf_counter() - started, ())
        sources: list[tuple[str, Path]] = []
        if allow_backup and self.has_backup(name):
            sources.append(("backup", self._backup_dir(name)))
        staging = self.root / ".build" / f"{name}.repair"
        for how, directory in sources:
            if set(bad_rels) <= set(self._good_files_in(name, directory)):
                self._install(directory, target, bad_rels)
                return Repair(name, how, time.perf_counter() - started, tuple(bad_rels))
        if allow_rebuild and entry.source:
            from workers.models.generate import build_into

            shutil.rmtree(staging, ignore_errors=True)
            try:
                files = build_into(self.root, entry.kind, dict(entry.source), staging)
                wrong = [rel for rel in bad_rels if files.get(rel) != entry.files[rel]]
                if wrong:
                    raise RepairFailed(
                        f"rebuilding {name!r} from its recipe gave different bytes for {wrong}: the recipe or "
                        "library versions changed since the manifest was written")
                self._install(staging, target, bad_rels)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            return Repair(name, "rebuild", time.perf_counter() - started, tuple(bad_rels))
        raise RepairFailed(f"model {name!r} is corrupt ({bad[0].detail}) and has no good backup or recipe")

    @staticmethod
    def _install(source_dir: Path, target: Path, rels: list[str]) -> None:
        for rel in rels:
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".repair-tmp")
            shutil.copyfile(source_dir / rel, tmp)
            tmp.replace(dest)  # atomic per file: a reader sees the old or the new file, never half
