"""The model-file integrity checker and the corruption injectors (workers.models.integrity, .corrupt).

Real safetensors files are written with safetensors.torch; every corruption must be reported
with the kind ``expected_kind`` names, by ``check_file`` and ``check_bytes`` alike, and the
checker's structural verdicts must agree with what the safetensors library itself refuses.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import safetensors
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError
from safetensors.torch import load_file, save, save_file

from workers.models.corrupt import Corruption, corrupt_bytes, corrupt_file, expected_kind
from workers.models.integrity import (
    DTYPE_BITS,
    HEAD_BYTES,
    CorruptionKind,
    FileCheck,
    IntegrityError,
    check_bytes,
    check_file,
    require_ok,
    sha256_bytes,
    sha256_file,
)

SEEDS = (0, 1, 2, 7)
# Corruptions the library refuses on load; the rest (one bit, one tensor zeroed) load silently.
STRUCTURAL = (Corruption.TRUNCATE, Corruption.HEADER, Corruption.LFS_POINTER, Corruption.HTML_PAGE,
              Corruption.TRAILING, Corruption.EMPTY, Corruption.ALL_BYTES)
SILENT = (Corruption.FLIP_BIT, Corruption.TENSOR_ZERO)
CONFIG_CORRUPTIONS = tuple(c for c in Corruption if c not in (Corruption.HEADER, Corruption.TENSOR_ZERO))


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "unet.conv.weight": torch.randn(32, 16, generator=g),
        "unet.conv.bias": torch.randn(64, generator=g).half(),
        "text.emb": torch.randn(8, 8, generator=g).bfloat16(),
        "text.position_ids": torch.arange(1, 11, dtype=torch.int64),
        "mask": torch.rand(13, generator=g) > 0.5,
        "lut": torch.randint(1, 255, (7,), generator=g, dtype=torch.uint8),
    }


def _library_loads(data: bytes) -> bool:
    """The safetensors Rust parser's verdict (dtype-agnostic, unlike the torch binding)."""
    try:
        safetensors.deserialize(data)
    except SafetensorError:
        return False
    return True


def _raw_safetensors(header: dict | bytes, data: bytes) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, str, int]:
    path = tmp_path / "model.safetensors"
    save_file(_tensors(), str(path), metadata={"format": "pt"})
    return path, sha256_file(path), path.stat().st_size


@pytest.fixture
def config(tmp_path: Path) -> tuple[Path, str, int]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"_class_name": "UNet2DConditionModel", "in_channels": 4, "sample_size": 64}))
    return path, sha256_file(path), path.stat().st_size


def _copy(src: Path, tmp_path: Path, tag: str) -> Path:
    dst = tmp_path / tag / src.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


# --- clean files --------------------------------------------------------------------------------


def test_clean_model_is_ok_with_and_without_hash(model: tuple[Path, str, int]) -> None:
    path, sha, size = model
    data = path.read_bytes()
    assert sha == hashlib.sha256(data).hexdigest() == sha256_bytes(data)
    full = check_file(path, sha, size)
    assert full == FileCheck(str(path), True, None, "", full.bytes_read, full.seconds)
    assert full.bytes_read >= size  # the hash read everything
    quick = check_file(path, sha, size, verify_hash=False)
    assert quick.ok and quick.kind is None and quick.detail == ""
    header_len = struct.unpack("<Q", data[:8])[0]
    assert quick.bytes_read <= max(HEAD_BYTES, 8 + header_len)
    for verify in (True, False):
        in_memory = check_bytes(memoryview(data), "model.safetensors", sha, size, verify_hash=verify)
        assert in_memory.ok, in_memory.detail
    assert check_file(path).ok and check_bytes(data, "model.safetensors").ok
    assert require_ok(full) is full


def test_clean_config_and_empty_config_recorded_as_empty(config: tuple[Path, str, int], tmp_path: Path) -> None:
    path, sha, size = config
    assert check_file(path, sha, size).ok
    empty = tmp_path / "merges.txt"
    empty.write_bytes(b"")
    assert check_file(empty, hashlib.sha256(b"").hexdigest(), 0).ok
    assert check_file(empty).kind is CorruptionKind.EMPTY  # nothing says it may be empty


def test_large_header_only_check_reads_the_header_not_the_data(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    save_file({"w": torch.ones(1024, 1024)}, str(path))  # 4 MiB of data
    check = check_file(path, "0" * 64, path.stat().st_size, verify_hash=False)
    assert check.ok and check.bytes_read <= HEAD_BYTES


def test_header_length_that_looks_like_pickle_magic_is_not_a_pickle(tmp_path: Path) -> None:
    # A 640-byte header makes the file start 80 02 00 00: pickle protocol 2 magic by accident.
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode().ljust(640)
    data = _raw_safetensors(header, struct.pack("<2f", 1.5, -2.0))
    assert data[:2] == b"\x80\x02" and _library_loads(data)
    assert check_bytes(data, "w.safetensors").ok
    damaged = data[:8] + b"\x00" * 8 + data[16:]  # the '{' zeroed: a damaged header, still not a pickle
    assert check_bytes(damaged, "w.safetensors").kind is CorruptionKind.HEADER_DAMAGED


# --- every corruption, file and buffer ----------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("corruption", list(Corruption))
def test_every_corruption_is_detected_in_a_model(model: tuple[Path, str, int], tmp_path: Path,
                                                 corruption: Corruption, seed: int) -> None:
    src, sha, size = model
    original = src.read_bytes()
    path = _copy(src, tmp_path, f"{corruption}-{seed}")
    report = corrupt_file(path, corruption, seed=seed)
    damaged = path.read_bytes()
    assert damaged != original and report.corruption is corruption and report.path == str(path)
    assert report.bytes_changed > 0, report
    # The same plan applied to a buffer gives the same bytes.
    buffered, buf_report = corrupt_bytes(original, corruption.value, seed=seed, name=path.name)
    assert buffered == damaged
    assert (buf_report.offset, buf_report.bytes_changed) == (report.offset, report.bytes_changed)

    allowed = expected_kind(corruption, path.name)
    on_disk = check_file(path, sha, size)
    in_memory = check_bytes(damaged, path.name, sha, size)
    for check, label in ((on_disk, str(path)), (in_memory, path.name)):
        assert not check.ok and check.kind in allowed, (corruption, seed, check)
        assert check.detail.startswith(f"{label}: ") and len(check.detail) > len(label) + 10
        with pytest.raises(IntegrityError) as err:
            require_ok(check)
        assert err.value.check is check and str(err.value) == check.detail


@pytest.mark.parametrize("corruption", CONFIG_CORRUPTIONS)
def test_every_applicable_corruption_is_detected_in_a_config(config: tuple[Path, str, int], tmp_path: Path,
                                                             corruption: Corruption) -> None:
    src, sha, size = config
    path = _copy(src, tmp_path, str(corruption))
    corrupt_file(path, corruption, seed=3)
    check = check_file(path, sha, size)
    assert not check.ok and check.kind in expected_kind(corruption, path.name), check
    assert str(path) in check.detail


def test_report_matches_the_bytes_it_changed(model: tuple[Path, str, int]) -> None:
    original = model[0].read_bytes()
    size = len(original)
    header_end = 8 + struct.unpack("<Q", original[:8])[0]

    flipped, rep = corrupt_bytes(original, Corruption.FLIP_BIT, seed=5)
    diffs = [i for i in range(size) if flipped[i] != original[i]]
    assert diffs == [rep.offset] and rep.bytes_changed == 1 and rep.offset >= header_end
    assert bin(flipped[rep.offset] ^ original[rep.offset]).count("1") == 1

    cut, rep = corrupt_bytes(original, Corruption.TRUNCATE, fraction=0.25)
    assert len(cut) == rep.offset == int(size * 0.25) and cut == original[: len(cut)]
    assert rep.bytes_changed == size - len(cut)

    longer, rep = corrupt_bytes(original, Corruption.TRAILING, seed=1)
    assert longer[:size] == original and rep.offset == size and len(longer) - size == rep.bytes_changed

    head, rep = corrupt_bytes(original, Corruption.HEADER, seed=2)
    assert 8 <= rep.offset < header_end and head[header_end:] == original[header_end:]
    assert head[rep.offset : rep.offset + rep.bytes_changed] == bytes(rep.bytes_changed)

    pointer, rep = corrupt_bytes(original, Corruption.LFS_POINTER)
    lines = pointer.decode().splitlines()
    assert lines == ["version https://git-lfs.github.com/spec/v1", f"oid sha256:{model[1]}", f"size {size}"]
    assert rep.offset is None

    page, _ = corrupt_bytes(original, Corruption.HTML_PAGE, seed=1)
    assert b"</html>" in page.lower() and b"<title>" in page

    zeroed, rep = corrupt_bytes(original, Corruption.TENSOR_ZERO, seed=4)
    assert zeroed[rep.offset : rep.offset + 4] == bytes(4) and len(zeroed) == size
    assert sum(a != b for a, b in zip(zeroed, original, strict=True)) == rep.bytes_changed

    noise, rep = corrupt_bytes(original, Corruption.ALL_BYTES, seed=9)
    assert len(noise) == size and rep.bytes_changed == sum(a != b for a, b in zip(noise, original, strict=True))
    assert rep.bytes_changed > size * 0.9  # random bytes match the original about 1 time in 256
    assert corrupt_bytes(original, Corruption.ALL_BYTES, seed=9)[0] == noise  # seeded
    assert corrupt_bytes(original, Corruption.ALL_BYTES, seed=10)[0] != noise


def test_corrupt_file_writes_in_place(model: tuple[Path, str, int]) -> None:
    path = model[0]
    inode = path.stat().st_ino
    corrupt_file(path, Corruption.FLIP_BIT)
    assert path.stat().st_ino == inode and path.stat().st_size == model[2]


# --- the documented limit: one flipped bit is only caught by the hash ---------------------------


@pytest.mark.parametrize("corruption", SILENT)
def test_silent_corruption_passes_structure_and_fails_the_hash(model: tuple[Path, str, int],
                                                               corruption: Corruption) -> None:
    path, sha, size = model
    before = {k: v.clone() for k, v in load_file(str(path)).items()}  # load_file's tensors alias the file
    corrupt_file(path, corruption, seed=11)
    structural = check_file(path, sha, size, verify_hash=False)
    assert structural.ok  # the limit: structure is intact, only the content changed
    hashed = check_file(path, sha, size)
    assert hashed.kind is CorruptionKind.HASH_MISMATCH and sha in hashed.detail
    assert check_bytes(path.read_bytes(), path.name, sha, size).kind is CorruptionKind.HASH_MISMATCH
    after = load_file(str(path))  # the library loads it without complaint, with wrong values
    changed = [k for k in before if not torch.equal(before[k].view(torch.uint8), after[k].view(torch.uint8))]
    assert len(changed) == 1


def test_in_place_damage_reaches_tensors_already_loaded(model: tuple[Path, str, int]) -> None:
    # safetensors 0.8 load_file maps the file: its tensors are the file's pages, so a check done
    # before loading does not cover a file damaged afterwards (copy to own memory, or re-check).
    path = model[0]
    loaded = load_file(str(path))
    kept = {k: v.clone() for k, v in loaded.items()}
    report = corrupt_file(path, Corruption.TENSOR_ZERO, seed=0)
    zeroed = [k for k in loaded if not torch.equal(loaded[k], kept[k])]
    assert len(zeroed) == 1 and zeroed[0] in report.detail


# --- agreement with the safetensors library ----------------------------------------------------


@pytest.mark.parametrize("corruption", STRUCTURAL)
def test_structural_kinds_are_what_the_library_refuses(model: tuple[Path, str, int], corruption: Corruption) -> None:
    path = model[0]
    corrupt_file(path, corruption, seed=2)
    with pytest.raises(SafetensorError):
        load_file(str(path))
    check = check_file(path, verify_hash=False)  # no manifest values: structure alone must refuse it
    assert not check.ok and check.kind in expected_kind(corruption, path.name)


_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
CRAFTED: dict[str, tuple[bytes, CorruptionKind | None]] = {
    "valid": (_raw_safetensors({"a": _ENTRY}, bytes(8)), None),
    "leading_space": (_raw_safetensors(b" " + json.dumps({"a": _ENTRY}).encode(), bytes(8)), None),
    "no_tensors": (_raw_safetensors({}, b""), None),
    "metadata_null": (_raw_safetensors({"__metadata__": None, "a": _ENTRY}, bytes(8)), None),
    "extra_field": (_raw_safetensors({"a": {**_ENTRY, "note": "x"}}, bytes(8)), None),
    "gap": (_raw_safetensors({"a": {**_ENTRY, "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),
            CorruptionKind.HEADER_DAMAGED),
    "overlap": (_raw_safetensors({"a": _ENTRY, "b": {**_ENTRY, "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),
                CorruptionKind.HEADER_DAMAGED),
    "shape_vs_offsets": (_raw_safetensors({"a": {**_ENTRY, "shape": [3]}}, bytes(8)), CorruptionKind.HEADER_DAMAGED),
    "float_shape": (_raw_safetensors({"a": {**_ENTRY, "shape": [2.0]}}, bytes(8)), CorruptionKind.HEADER_DAMAGED),
    "unknown_dtype": (_raw_safetensors({"a": {**_ENTRY, "dtype": "F31"}}, bytes(8)), CorruptionKind.HEADER_DAMAGED),
    "metadata_not_str": (_raw_safetensors({"__metadata__": {"x": 1}}, b""), CorruptionKind.HEADER_DAMAGED),
    "duplicate_field": (_raw_safetensors(b'{"a": {"dtype": "F32", "dtype": "F32", "shape": [2], '
                                         b'"data_offsets": [0, 8]}}', bytes(8)), CorruptionKind.HEADER_DAMAGED),
    "lone_surrogate": (_raw_safetensors(b'{"a\\ud800": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
                                        bytes(8)), CorruptionKind.HEADER_DAMAGED),
    "nan": (_raw_safetensors(b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": NaN}}', bytes(8)),
            CorruptionKind.HEADER_DAMAGED),
    "array_header": (_raw_safetensors(b"[1, 2]", b""), CorruptionKind.HEADER_DAMAGED),
    "length_1": (struct.pack("<Q", 1) + b"{", CorruptionKind.HEADER_DAMAGED),
    "length_huge": (struct.pack("<Q", 10**9) + b"{}", CorruptionKind.HEADER_DAMAGED),
    "length_past_end": (struct.pack("<Q", 500) + b"{}", CorruptionKind.TRUNCATED),
    "short_prefix": (b"\x02\x00\x00", CorruptionKind.TRUNCATED),
    "data_short": (_raw_safetensors({"a": _ENTRY}, bytes(7)), CorruptionKind.TRUNCATED),
    "data_long": (_raw_safetensors({"a": _ENTRY}, bytes(9)), CorruptionKind.TRAILING_BYTES),
    "sub_byte_misaligned": (_raw_safetensors({"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, bytes(2)),
                            CorruptionKind.HEADER_DAMAGED),
    "sub_byte_aligned": (_raw_safetensors({"a": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]}}, bytes(2)),
                         None),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_headers_agree_with_the_library(case: str) -> None:
    data, kind = CRAFTED[case]
    check = check_bytes(data, f"{case}.safetensors")
    assert check.kind is kind, check.detail
    assert check.ok == _library_loads(data)


# --- pickle is refused without being deserialised ------------------------------------------------

_DETONATIONS: list[str] = []


def _detonate(message: str) -> None:
    _DETONATIONS.append(message)
    raise RuntimeError(message)


class _Detonator:
    def __reduce__(self) -> tuple:
        return (_detonate, ("a pickle was deserialised",))


def _forbid(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("the integrity check called an unpickler")


@pytest.mark.parametrize("name", ["weights.safetensors", "weights.pt", "pytorch_model.bin", "w.ckpt", "w.pkl"])
def test_pickles_are_refused_without_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    payloads = {f"protocol{p}": pickle.dumps({"w": [1.0, 2.0], "bomb": _Detonator()}, protocol=p) for p in (2, 3, 4, 5)}
    archive = tmp_path / "archive.pt"
    torch.save({"w": torch.ones(3), "bomb": _Detonator()}, archive)
    payloads["torch.save"] = archive.read_bytes()
    with pytest.raises(RuntimeError, match="deserialised"):  # the bomb is live: loading it would show
        pickle.loads(payloads["protocol4"])
    _DETONATIONS.clear()
    for target in (pickle, torch):
        for attr in ("load", "loads", "Unpickler"):
            if hasattr(target, attr):
                monkeypatch.setattr(target, attr, _forbid)
    for label, payload in payloads.items():
        path = tmp_path / label / name
        path.parent.mkdir()
        path.write_bytes(payload)
        for check in (check_file(path, sha256_bytes(payload), len(payload)), check_bytes(payload, name)):
            assert check.kind is CorruptionKind.PICKLE, (label, check)
            assert "pickle" in check.detail or "torch.save" in check.detail
            assert check.bytes_read <= HEAD_BYTES  # decided from the first bytes, never hashed or parsed
    assert _DETONATIONS == []


def test_pickle_suffix_refused_even_with_safetensors_content(model: tuple[Path, str, int], tmp_path: Path) -> None:
    renamed = tmp_path / "diffusion_pytorch_model.bin"
    shutil.copyfile(model[0], renamed)
    check = check_file(renamed, model[1], model[2])
    assert check.kind is CorruptionKind.PICKLE and "'.bin'" in check.detail


# --- other kinds and arguments -------------------------------------------------------------------


def test_missing_directory_size_and_sniffed_pages(config: tuple[Path, str, int], tmp_path: Path) -> None:
    gone = check_file(tmp_path / "nope.safetensors")
    assert gone.kind is CorruptionKind.MISSING and "does not exist" in gone.detail and gone.bytes_read == 0
    assert check_file(tmp_path).kind is CorruptionKind.MISSING
    path, sha, size = config
    wrong = check_file(path, sha, size + 1)
    assert wrong.kind is CorruptionKind.SIZE_MISMATCH and f"expected {size + 1}" in wrong.detail
    html = b"\r\n  \t<!DocType HTML><html><body>rate limited</body></html>"
    assert check_bytes(html, "config.json").kind is CorruptionKind.HTML_PAGE
    assert check_bytes(b"<HTML><body>x</body></HTML>", "m.safetensors").kind is CorruptionKind.HTML_PAGE
    lfs = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 12\n"
    assert check_bytes(lfs, "tokenizer.json").kind is CorruptionKind.LFS_POINTER


def test_checker_refuses_bad_expectations(model: tuple[Path, str, int]) -> None:
    path, sha, size = model
    with pytest.raises(ValueError, match="64 hex digits"):
        check_file(path, "abc", size)
    with pytest.raises(ValueError, match="non-negative"):
        check_bytes(b"x", "x.json", sha, -1)
    assert check_file(path, f"sha256:{sha.upper()}", size).ok  # prefix and case are normalised


def test_bad_corruption_arguments(model: tuple[Path, str, int], config: tuple[Path, str, int],
                                  tmp_path: Path) -> None:
    path = model[0]
    with pytest.raises(ValueError, match=r"unknown corruption 'melt'.*truncate.*flip_bit.*trailing"):
        corrupt_file(path, "melt")
    for fraction in (0, 1, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="fraction must be a number strictly between 0 and 1"):
            corrupt_file(path, Corruption.TRUNCATE, fraction=fraction)
    with pytest.raises(ValueError, match="not an existing regular file"):
        corrupt_file(tmp_path / "absent.safetensors", Corruption.FLIP_BIT)
    no_data = tmp_path / "no_data.safetensors"
    save_file({}, str(no_data))
    no_data_bytes = no_data.read_bytes()
    with pytest.raises(ValueError, match="no tensor data"):
        corrupt_file(no_data, Corruption.FLIP_BIT)
    zeros = tmp_path / "zeros.safetensors"
    save_file({"z": torch.zeros(4)}, str(zeros))
    zeros_bytes = zeros.read_bytes()
    with pytest.raises(ValueError, match="nonzero byte"):
        corrupt_file(zeros, Corruption.TENSOR_ZERO)
    assert (no_data.read_bytes(), zeros.read_bytes()) == (no_data_bytes, zeros_bytes)  # refusals change nothing
    with pytest.raises(ValueError, match=r"needs a \.safetensors file"):
        corrupt_file(config[0], Corruption.HEADER)
    with pytest.raises(ValueError, match=r"needs a \.safetensors file"):
        expected_kind(Corruption.TENSOR_ZERO, "config.json")
    corrupt_file(path, Corruption.TRAILING)
    with pytest.raises(ValueError, match="already damaged"):
        corrupt_file(path, Corruption.FLIP_BIT)
    with pytest.raises(ValueError, match="at least 2"):
        corrupt_bytes(b"x", Corruption.TRUNCATE, name="a.json")
    with pytest.raises(ValueError, match="is empty"):
        corrupt_bytes(b"", Corruption.ALL_BYTES)


# --- properties ----------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_garbage_is_never_ok(data: bytes) -> None:
    check = check_bytes(data, "x.safetensors")  # must not raise
    assert isinstance(check, FileCheck)
    # ok only if the library would load it too: random bytes that happen to be a valid file.
    assert not check.ok or _library_loads(data)
    if not _library_loads(data):
        assert not check.ok and check.kind is not None and check.detail.startswith("x.safetensors: ")


_DTYPES = st.sampled_from([*sorted(DTYPE_BITS), "F31", "f32", ""])
_ENTRIES = st.fixed_dictionaries({"dtype": _DTYPES, "shape": st.lists(st.integers(0, 5), max_size=3),
                                  "data_offsets": st.lists(st.integers(0, 40), min_size=2, max_size=2)})


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=3), _ENTRIES | st.integers() | st.none(), max_size=4),
       st.integers(0, 80), st.sampled_from(["", " ", "  \n"]))
def test_generated_headers_agree_with_the_library(header: dict, data_bytes: int, pad: str) -> None:
    data = _raw_safetensors((json.dumps(header) + pad).encode(), bytes(data_bytes))
    check = check_bytes(data, "g.safetensors", verify_hash=False)
    assert check.ok == _library_loads(data), check.detail


_CLEAN = bytes(save(_tensors(1), metadata={"format": "pt"}))
_HEADER_END = 8 + struct.unpack("<Q", _CLEAN[:8])[0]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, _HEADER_END - 1), st.integers(0, 255)), min_size=1, max_size=3),
       st.integers(-64, 64))
def test_damaged_headers_agree_with_the_library(edits: list[tuple[int, int]], resize: int) -> None:
    data = bytearray(_CLEAN)
    for pos, value in edits:
        data[pos] = value
    if resize < 0:
        del data[resize:]
    else:
        data += bytes(resize)
    check = check_bytes(bytes(data), "m.safetensors", verify_hash=False)
    assert check.ok == _library_loads(bytes(data)), check.detail
