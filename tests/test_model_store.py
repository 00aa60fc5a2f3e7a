"""The model store: manifest validation (paths inside the root, no pickles, dependencies, cycles),
deterministic recipes, repair from a backup or a rebuild that must hash to the manifest, and the
host RAM cache refusing corrupt copies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from workers.host.modelcache import HostModelCache
from workers.models import generate
from workers.models import manifest as mf
from workers.models.corrupt import Corruption, corrupt_file
from workers.models.integrity import CorruptionKind, IntegrityError
from workers.models.store import ModelNotFound, ModelStore, RepairFailed


@pytest.fixture(scope="module")
def built_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    generate.build(root, [generate.tiny_sd("tiny-sd-a", 1),
                          generate.ModelSpec("tiny-lora-a", "lora", {"seed": 12, "base": "tiny-sd-a", "rank": 4},
                                             ("tiny-sd-a",)),
                          generate.synthetic(2)])
    return root


@pytest.fixture
def root(built_root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "models"
    shutil.copytree(built_root, copy)
    return copy


def _edit_manifest(root: Path, edit) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads((root / mf.MANIFEST_NAME).read_text())
    edit(doc)
    (root / mf.MANIFEST_NAME).write_text(json.dumps(doc))


def test_built_models_verify_clean_and_rebuild_identically(root: Path) -> None:
    store = ModelStore(root)
    assert store.names() == ["synthetic-2m", "tiny-lora-a", "tiny-sd-a"]
    for name in store.names():
        assert all(c.ok for c in store.verify(name)), name
    assert store.load_order(["tiny-lora-a"]) == ["tiny-sd-a", "tiny-lora-a"]
    # rebuilding from the recipe gives the same bytes: the basis of repair by rebuild
    entry = store.entry("tiny-sd-a")
    rebuilt = generate.build_into(root, entry.kind, dict(entry.source), root / ".build" / "again")
    assert rebuilt == entry.files
    assert generate.build(root, [generate.tiny_sd("tiny-sd-a", 1)]) == []  # current: nothing rebuilt


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda d: d["models"]["tiny-sd-a"].update(path="../outside"), "inside the model root"),
    (lambda d: d["models"]["tiny-sd-a"].update(path="/etc"), "inside the model root"),
    (lambda d: d["models"]["tiny-sd-a"]["files"].update({"unet/x.ckpt": {"sha256": "0" * 64, "bytes": 1}}),
     "pickle"),
    (lambda d: d["models"]["tiny-lora-a"].update(depends_on=["nope"]), "'nope'"),
    (lambda d: d["models"]["tiny-sd-a"].update(depends_on=["tiny-lora-a"]), "cycle"),
    (lambda d: d["models"]["tiny-sd-a"].update(kind="onnx"), "kind 'onnx'"),
    (lambda d: d.update(format=7), "format 7"),
    (lambda d: d["models"]["tiny-sd-a"]["files"]["unet/config.json"].update(sha256="xyz"), "64 lowercase hex"),
])
def test_a_bad_manifest_is_refused_naming_the_problem(root: Path, edit, expected: str) -> None:  # type: ignore[no-untyped-def]
    _edit_manifest(root, edit)
    with pytest.raises(mf.ManifestError, match=expected):
        ModelStore(root).names()


def test_a_symlink_escaping_the_root_is_refused(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    with pytest.raises(mf.ManifestError, match="outside the model root"):
        mf.safe_join(root, "escape", "x.safetensors")


def test_unknown_model_and_file_are_named(root: Path) -> None:
    store = ModelStore(root)
    with pytest.raises(ModelNotFound, match=r"'nope'.*known"):
        store.entry("nope")
    with pytest.raises(ModelNotFound, match="no file 'x'"):
        store.file_path("tiny-sd-a", "x")


@pytest.mark.parametrize("corruption", [Corruption.FLIP_BIT, Corruption.TRUNCATE, Corruption.HEADER,
                                        Corruption.LFS_POINTER, Corruption.HTML_PAGE])
def test_repair_prefers_a_verified_backup_then_a_rebuild(root: Path, corruption: Corruption) -> None:
    store = ModelStore(root)
    weights = store.file_path("tiny-sd-a", "unet/diffusion_pytorch_model.safetensors")
    clean = weights.read_bytes()
    store.backup("tiny-sd-a")
    corrupt_file(weights, corruption, seed=3)
    assert [c.kind for c in store.verify("tiny-sd-a") if not c.ok]
    with pytest.raises(IntegrityError):
        store.read_verified("tiny-sd-a")
    repair = store.repair("tiny-sd-a")
    assert repair.how == "backup" and repair.replaced == ("unet/diffusion_pytorch_model.safetensors",)
    assert weights.read_bytes() == clean
    # now the backup is damaged too: the rebuild from the recipe must hash to the manifest
    corrupt_file(weights, corruption, seed=4)
    corrupt_file(root / ".backup" / "tiny-sd-a" / "unet/diffusion_pytorch_model.safetensors", Corruption.FLIP_BIT)
    assert store.repair("tiny-sd-a").how == "rebuild"
    assert weights.read_bytes() == clean


def test_a_corrupt_model_is_never_backed_up_and_without_recipe_repair_fails(root: Path) -> None:
    store = ModelStore(root)
    corrupt_file(store.file_path("synthetic-2m", "model.safetensors"), Corruption.FLIP_BIT)
    with pytest.raises(IntegrityError):
        store.backup("synthetic-2m")
    _edit_manifest(root, lambda d: d["models"]["synthetic-2m"].update(source={}))
    with pytest.raises(RepairFailed, match="no good backup or recipe"):
        ModelStore(root).repair("synthetic-2m")


def test_host_cache_never_holds_a_corrupt_copy_and_evicts_lru(root: Path) -> None:
    store = ModelStore(root)
    size = store.entry("synthetic-2m").total_bytes
    with HostModelCache(store, cap_bytes=size + store.entry("tiny-sd-a").total_bytes) as cache:
        assert not cache.ensure("synthetic-2m").hit and cache.ensure("synthetic-2m").hit
        assert all(c.ok for c in cache.verify("synthetic-2m"))
        fill = cache.ensure("tiny-sd-a")
        assert fill.evicted == () and cache.names() == ["synthetic-2m", "tiny-sd-a"]
        assert cache.ensure("tiny-lora-a").evicted == ("synthetic-2m",)  # least recently used goes
        # corruption at rest in the cache is caught by re-verification
        data = bytearray(cache.read("tiny-lora-a", "pytorch_lora_weights.safetensors"))
        data[-3] ^= 0x10
        cache.overwrite("tiny-lora-a", "pytorch_lora_weights.safetensors", bytes(data))
        assert [c.kind for c in cache.verify("tiny-lora-a") if not c.ok] == [CorruptionKind.HASH_MISMATCH]
        # a corrupt file on disk never enters the cache
        corrupt_file(store.file_path("synthetic-2m", "model.safetensors"), Corruption.TRUNCATE)
        with pytest.raises(IntegrityError, match="synthetic-2m"):
            cache.ensure("synthetic-2m")
        assert "synthetic-2m" not in cache
