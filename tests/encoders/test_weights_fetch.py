"""Weights for offline machines: ``pathmm weights fetch`` against a local stand-in for the Hugging Face hub (an
HTTP server in a thread that answers the hub's ``/<repo>/resolve/<revision>/<file>`` HEAD and GET as the hub
does, reached through ``HF_ENDPOINT`` by the real huggingface_hub code), the manifest it writes, ``weights
verify``, and ``encoder_weights`` pointing at the manifest: the same weights, features and provenance as the
file itself, and a changed file refused with its name and both hashes."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from pathmm_pipeline.core.provenance import read_provenance
from pathmm_pipeline.core.weights import MANIFEST_FORMAT, local_weights_files, read_manifest, resolve_weights
from pathmm_pipeline.encoders import get_encoder_spec, load_encoder
from pathmm_pipeline.encoders.weights import WeightsError, fetch_weights, verify_manifest
from pathmm_pipeline.encoders.zoo import build_vit_tiny_test
from pathmm_pipeline.plan.cards import weights_files

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO_ID = "standin/vit-tiny"
DAMAGED = "standin/damaged"


class StandInHub(http.server.ThreadingHTTPServer):
    """Serves ``repos[<owner>/<repo>][<file>] = bytes`` at revision ``main`` (= :data:`COMMIT`) or the commit, with
    the headers huggingface_hub reads: X-Repo-Commit, ETag (an LFS file's is its sha256), Content-Length, and
    X-Error-Code on a 404. ``etags`` overrides a file's ETag (a hub that publishes another hash)."""

    def __init__(self, repos: dict[str, dict[str, bytes]], etags: dict[tuple[str, str], str]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos, self.etags, self.requests = repos, etags, []


class _Handler(http.server.BaseHTTPRequestHandler):
    server: StandInHub

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        self.server.requests.append((self.command, self.path))
        parts = self.path.split("?", 1)[0].lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(404, "EntryNotFound")
        repo, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        if repo not in self.server.repos:
            return self._error(401, "RepoNotFound")
        if revision not in ("main", COMMIT):
            return self._error(404, "RevisionNotFound")
        data = self.server.repos[repo].get(name)
        if data is None:
            return self._error(404, "EntryNotFound", commit=True)
        etag = self.server.etags.get((repo, name), hashlib.sha256(data).hexdigest())
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{etag}"')
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, status: int, code: str, commit: bool = False) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", f"{code} (stand-in hub)")
        if commit:
            self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def weights_bytes(tmp_path_factory) -> bytes:
    """A real state dict of ``vit_tiny_test`` (seeded, not its random init at load), as torch.save writes it."""
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("published") / "pytorch_model.bin"
    torch.save(build_vit_tiny_test().state_dict(), path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def hub(weights_bytes):
    # model.safetensors is absent: the fetch falls back to pytorch_model.bin, as for most pathology repositories
    server = StandInHub({REPO_ID: {"pytorch_model.bin": weights_bytes, "README.md": b"stand-in\n"},
                         DAMAGED: {"pytorch_model.bin": weights_bytes},
                         "MahmoodLab/UNI": {"pytorch_model.bin": b"not really UNI"}},
                        {(DAMAGED, "pytorch_model.bin"): "f" * 64})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def pathmm(hub: StandInHub, home: Path, *args: str) -> subprocess.CompletedProcess:
    """The ``pathmm`` CLI in a fresh process online, its hub the stand-in (huggingface_hub reads HF_ENDPOINT and
    HF_HUB_OFFLINE when imported, so they are set before)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{hub.server_address[1]}", HF_HOME=str(home / "hf_home"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_IMPLICIT_TOKEN="1", NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pathmm_pipeline.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def fetched(hub, tmp_path_factory) -> Path:
    """``pathmm weights fetch vit_tiny_test=standin/vit-tiny --out <dir>``: the manifest's path."""
    root = tmp_path_factory.mktemp("fetched")
    proc = pathmm(hub, root, "weights", "fetch", f"vit_tiny_test={REPO_ID}", "--out", str(root / "models"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = root / "models" / "vit_tiny_test" / "manifest.json"
    assert proc.stdout.strip() == str(manifest)
    return manifest


def test_fetch_writes_the_files_and_a_manifest_of_their_hashes(fetched, weights_bytes, hub):
    record = json.loads(fetched.read_text())
    assert record["format"] == MANIFEST_FORMAT and record["encoder"] == "vit_tiny_test"
    assert record["hub_id"] == REPO_ID and record["revision"] == COMMIT and record["requested_revision"] == "main"
    assert record["files"] == [{"file": "pytorch_model.bin", "sha256": hashlib.sha256(weights_bytes).hexdigest(),
                                "size": len(weights_bytes)}]
    assert record["fetched_utc"].endswith("+00:00") and record["pathmm_version"]
    assert (fetched.parent / "pytorch_model.bin").read_bytes() == weights_bytes
    assert sorted(p.name for p in fetched.parent.parent.iterdir()) == ["vit_tiny_test"]  # no staging left
    assert sorted(p.name for p in fetched.parent.iterdir()) == ["manifest.json", "pytorch_model.bin"]
    asked = {path for _, path in hub.requests}
    assert f"/{REPO_ID}/resolve/main/model.safetensors" in asked  # the preferred file first, then the fallback
    assert f"/{REPO_ID}/resolve/{COMMIT}/pytorch_model.bin" in asked  # downloaded at the resolved commit
    manifest = read_manifest(fetched)
    assert manifest.revision == COMMIT and manifest.files[0].file == "pytorch_model.bin"


def test_verify_passes_then_a_changed_byte_fails_naming_the_file_and_both_hashes(fetched, hub, tmp_path):
    ok = pathmm(hub, tmp_path, "weights", "verify", str(fetched))
    assert ok.returncode == 0 and ": ok (vit_tiny_test" in ok.stdout and COMMIT in ok.stdout, ok.stderr[-2000:]

    copy = tmp_path / "offline" / "vit_tiny_test"
    shutil.copytree(fetched.parent, copy)
    target = copy / "pytorch_model.bin"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    expected = read_manifest(copy / "manifest.json").files[0].sha256
    found = hashlib.sha256(data).hexdigest()

    bad = pathmm(hub, tmp_path, "weights", "verify", str(copy / "manifest.json"))
    assert bad.returncode == 2 and bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1, bad.stderr
    assert str(target) in lines[0] and expected in lines[0] and found in lines[0] and "fetch it again" in lines[0]

    for reference in (copy / "manifest.json", copy):  # the manifest, or the folder holding it
        with pytest.raises(WeightsError, match=f"expected {expected}, found {found}"):
            resolve_weights(reference)
        with pytest.raises(WeightsError, match=found):
            load_encoder("vit_tiny_test", weights=str(reference))

    target.unlink()
    with pytest.raises(WeightsError, match="but missing"):
        weights_files("vit_tiny_test", str(copy / "manifest.json"))  # planning sees a missing file too
    with pytest.raises(WeightsError, match="missing"):
        verify_manifest(copy / "manifest.json")


def test_a_manifest_loads_the_same_weights_as_the_file_itself(fetched):
    file = fetched.parent / "pytorch_model.bin"
    via_manifest = load_encoder("vit_tiny_test", weights=str(fetched))
    direct = load_encoder("vit_tiny_test", weights=str(file))
    assert via_manifest.weights_source == direct.weights_source == str(file)
    assert via_manifest.weights_sha256 == direct.weights_sha256 == read_manifest(fetched).files[0].sha256
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(via_manifest.model(x), direct.model(x))
    random_init = load_encoder("vit_tiny_test", weights=None)
    with torch.no_grad():
        assert not torch.allclose(random_init.model(x), direct.model(x))  # the weights really were loaded


def test_extraction_from_a_manifest_matches_the_file_and_records_its_sha256(fetched, slide_factory, tmp_path,
                                                                              torch_one_thread):
    from pathmm_pipeline.preprocess.features import ExtractionSettings, extract_features, load_features
    from pathmm_pipeline.preprocess.segmentation import SegmentationSettings, segment_slide
    from pathmm_pipeline.preprocess.tiling import TilingSettings, tile_slide

    slide = slide_factory("weights", size=(1536, 1536)).path
    segment_slide(slide, tmp_path / "seg.zarr", tmp_path / "seg.geojson", tmp_path / "seg.png",
                  SegmentationSettings(), backend="openslide", fallback=False)
    tile_slide(slide, tmp_path / "seg.zarr", tmp_path / "tiles.zarr", TilingSettings(), backend="openslide",
               fallback=False)
    file = fetched.parent / "pytorch_model.bin"
    stores = {}
    for label, weights in (("manifest", fetched), ("file", file)):
        settings = ExtractionSettings(encoder="vit_tiny_test", weights=str(weights), batch_size=8, num_workers=0,
                                      dtype="float32")
        assert extract_features(slide, tmp_path / "tiles.zarr", tmp_path / f"{label}.zarr", settings) > 0
        stores[label] = tmp_path / f"{label}.zarr"
    np.testing.assert_array_equal(load_features(stores["manifest"]).features, load_features(stores["file"]).features)
    sha = read_manifest(fetched).files[0].sha256
    for store in stores.values():
        record = read_provenance(store)
        assert record["extra"]["encoder"]["weights_sha256"] == sha
        assert record["inputs"]["weights"]["sha256"] == sha


def test_planning_lists_a_manifests_files_as_the_extraction_inputs(fetched):
    file = str(fetched.parent / "pytorch_model.bin")
    assert weights_files("vit_tiny_test", str(fetched)) == [file]
    assert weights_files("vit_tiny_test", str(fetched.parent)) == [file]  # the folder holding the manifest
    assert local_weights_files(f"hf_hub:{REPO_ID}") == [] and weights_files("vit_tiny_test") == []


def test_a_registered_encoder_is_fetched_from_its_registry_hub_id_and_one_without_fails(hub, tmp_path):
    out = tmp_path / "models"
    proc = pathmm(hub, tmp_path, "weights", "fetch", "uni", "--out", str(out), "--revision", COMMIT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "uni" / "manifest.json").read_text())
    assert record["hub_id"] == "MahmoodLab/UNI" and record["revision"] == record["requested_revision"] == COMMIT
    assert record["files"][0]["sha256"] == hashlib.sha256(b"not really UNI").hexdigest()
    none = pathmm(hub, tmp_path, "weights", "fetch", "vit_tiny_test", "--out", str(out))
    assert none.returncode == 2 and "has no hub id (its weights: random init)" in none.stderr, none.stderr


def test_a_damaged_download_an_unknown_revision_or_file_fail_in_one_line_and_write_no_manifest(hub, tmp_path):
    out = tmp_path / "models"
    damaged = pathmm(hub, tmp_path, "weights", "fetch", f"uni={DAMAGED}", "--out", str(out))
    errors = [line for line in damaged.stderr.splitlines() if line.startswith("pathmm ")]  # (httpx logs requests)
    assert damaged.returncode == 2 and len(errors) == 1, damaged.stderr
    assert errors[0].startswith(f"pathmm weights: error: hf_hub:{DAMAGED}@{COMMIT}/pytorch_model.bin: downloaded "
                                f"with sha256 ")
    assert "the hub publishes " + "f" * 64 in errors[0]
    assert not out.exists() or not any(out.rglob("manifest.json"))

    revision = pathmm(hub, tmp_path, "weights", "fetch", f"uni={REPO_ID}", "--out", str(out), "--revision", "v9")
    assert revision.returncode == 2 and "no such revision" in revision.stderr, revision.stderr
    missing = pathmm(hub, tmp_path, "weights", "fetch", f"uni={REPO_ID}", "--out", str(out), "--file", "x.pth")
    assert missing.returncode == 2 and "has no file 'x.pth'" in missing.stderr, missing.stderr
    assert not out.exists() or not any(out.rglob("*"))  # nor a staging folder


def test_an_encoder_without_a_hub_id_or_a_bad_manifest_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(WeightsError, match=r"has no hub id \(its weights: random init\).*vit_tiny_test=<owner>/<repo>"):
        fetch_weights("vit_tiny_test", tmp_path, hub_id=get_encoder_spec("vit_tiny_test").default_weights)
    with pytest.raises(WeightsError, match=r"has no hub id \(its weights: package:"):
        fetch_weights("efficientnet_lite0", tmp_path, hub_id=get_encoder_spec("efficientnet_lite0").default_weights)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE is set"):
        fetch_weights("uni", tmp_path)

    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps({"format": MANIFEST_FORMAT, "encoder": "uni", "hub_id": "a/b", "revision": COMMIT,
                               "fetched_utc": "x", "pathmm_version": "0",
                               "files": [{"file": "../escape.bin", "sha256": "0" * 64, "size": 1}]}))
    with pytest.raises(WeightsError, match=r"malformed weights manifest: files\[0\].file"):
        resolve_weights(bad)
    bad.write_text("{}")
    with pytest.raises(WeightsError, match="is not a weights manifest"):
        weights_files("uni", str(bad))
    with pytest.raises(WeightsError, match="weights manifest not found"):
        resolve_weights(tmp_path / "nowhere" / "manifest.json")
