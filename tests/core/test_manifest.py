import json
import shutil
from pathlib import Path

import pytest

from core.atomic import atomic_write_bytes, sha256_file
from core.errors import CropsError, ErrorKind
from core.manifest import (
    BundleManifest,
    IndexSection,
    ModelSection,
    compute_model_id,
    read_manifest,
    register_file,
    verify_bundle,
    write_manifest,
)


def _fake_bundle(tmp_path: Path) -> Path:
    """A bundle of fake bytes: the manifest checks do not look inside the files."""
    d = tmp_path / "b"
    d.mkdir()
    for name, data in [("query_encoder.onnx", b"q"), ("tokenizer.json", b"{}"),
                       ("index.faiss", b"idx"), ("id_map.json", b"[]")]:
        (d / name).write_bytes(data)
    m = BundleManifest(bundle_id="b1")
    for name in ("query_encoder.onnx", "tokenizer.json", "index.faiss", "id_map.json"):
        register_file(d, m, name)
    mid = compute_model_id(m.files["query_encoder.onnx"].sha256)
    m.model = ModelSection(model_id=mid, base_model="x", embedding_dim=4, max_query_tokens=8,
                           max_doc_tokens=8, onnx_opset=17, parity_max_abs_err=0.0,
                           parity_tolerance=1e-4, parity_probes=1)
    m.index = IndexSection(model_id=mid, factory="Flat", ntotal=0, dim=4)
    write_manifest(d, m)
    return d


def test_roundtrip_and_verify(tmp_path: Path) -> None:
    d = _fake_bundle(tmp_path)
    m = verify_bundle(d, require_index=True)
    assert m.bundle_id == "b1"
    assert m.files["index.faiss"].sha256 == sha256_file(d / "index.faiss")


def test_corrupt_file_is_refused(tmp_path: Path) -> None:
    d = _fake_bundle(tmp_path)
    (d / "index.faiss").write_bytes(b"IDX")  # same size, other bytes
    with pytest.raises(CropsError) as exc:
        verify_bundle(d)
    assert exc.value.kind is ErrorKind.CHECKSUM_MISMATCH
    assert "index.faiss" in exc.value.message


def test_index_of_another_model_is_refused(tmp_path: Path) -> None:
    d = _fake_bundle(tmp_path)
    m = read_manifest(d)
    assert m.index is not None
    m.index.model_id = "someothermodel00"
    write_manifest(d, m)
    with pytest.raises(CropsError) as exc:
        verify_bundle(d)
    assert exc.value.kind is ErrorKind.INCOMPATIBLE
    assert "rebuild the index" in exc.value.message


def test_normalisation_version_skew_is_refused(tmp_path: Path) -> None:
    d = _fake_bundle(tmp_path)
    raw = json.loads((d / "manifest.json").read_text())
    raw["model"]["normalization_version"] = 999
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(CropsError, match="normalisation"):
        verify_bundle(d)


def test_missing_and_garbage_manifest(tmp_path: Path) -> None:
    with pytest.raises(CropsError) as exc:
        read_manifest(tmp_path)
    assert exc.value.kind is ErrorKind.NOT_FOUND
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CropsError) as exc2:
        read_manifest(tmp_path)
    assert exc2.value.kind is ErrorKind.BUNDLE_INVALID


def test_missing_file_is_refused(tmp_path: Path) -> None:
    d = _fake_bundle(tmp_path)
    (d / "id_map.json").unlink()
    with pytest.raises(CropsError, match=r"missing file id_map\.json"):
        verify_bundle(d)


def test_atomic_write_leaves_no_temp_on_success_and_keeps_old_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, 123)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_copy_of_bundle_still_verifies(tmp_path: Path) -> None:
    d = _fake_bundle(tmp_path)
    shutil.copytree(d, tmp_path / "copy")
    assert verify_bundle(tmp_path / "copy").bundle_id == "b1"
