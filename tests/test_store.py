"""Model store: missing-file errors, downloads from a loopback hub, corruption detection."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from portrait_animation.loaders.manifest import ModelFile, parse_manifest
from portrait_animation.loaders.store import (CorruptModelFile, MissingModelFiles, ModelStore, check_file_format)

from helpers.loopback_hub import LoopbackHub


def st_bytes(**tensors) -> bytes:
    return save({k: v.contiguous() for k, v in tensors.items()})


WEIGHTS = st_bytes(a=torch.arange(1000, dtype=torch.float32).reshape(10, 100), b=torch.ones(7))
CONFIG = json.dumps({"_class_name": "Toy", "hidden": 4}).encode()


def manifest(**over):
    files = [
        {"id": "adapter", "repo_id": "org/toy-adapter", "path": "unet/diffusion_pytorch_model.safetensors",
         "folder": "portrait_animation", "dest": "toy/adapter/diffusion_pytorch_model.safetensors",
         "size": len(WEIGHTS), "groups": ["core"]},
        {"id": "adapter_config", "repo_id": "org/toy-adapter", "path": "unet/config.json",
         "folder": "portrait_animation", "dest": "toy/adapter/config.json", "groups": ["core"]},
        {"id": "vae", "repo_id": "org/toy-vae", "path": "vae.safetensors", "folder": "vae",
         "dest": "toy-vae.safetensors", "size": len(WEIGHTS), "sha256": hashlib.sha256(WEIGHTS).hexdigest(),
         "groups": ["vae"]},
    ]
    for f in files:
        f.update(over.get(f["id"], {}))
    return parse_manifest({"family": "toy", "files": files})


@pytest.fixture
def hub(monkeypatch):
    h = LoopbackHub()
    h.add("org/toy-adapter", "unet/diffusion_pytorch_model.safetensors", WEIGHTS)
    h.add("org/toy-adapter", "unet/config.json", CONFIG)
    h.add("org/toy-vae", "vae.safetensors", WEIGHTS)
    url = h.start()
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield h
    h.stop()


def test_missing_files_error_lists_file_source_and_destination(tmp_path, caplog):
    m = manifest()
    store = ModelStore.at(tmp_path / "models")
    with caplog.at_level("WARNING", logger="portrait_animation"), pytest.raises(MissingModelFiles) as e:
        store.ensure(m.files, download=False)
    # the full list (what the dialog no longer carries): every file's id, source and destination
    report = e.value.report
    assert "3 model file(s) missing" in report and "downloading is off" in report
    for f in m.files:
        assert f.id in report
        assert f.repo_id in report and f.path in report  # source
        assert str(tmp_path / "models" / f.folder / f.dest) in report  # destination
    assert [f.id for f, _ in e.value.missing] == ["adapter", "adapter_config", "vae"]
    # logged once, in full
    logged = [r.getMessage() for r in caplog.records if "model file(s) missing" in r.getMessage()]
    assert len(logged) == 1 and report in logged[0]
    # the dialog text: count, reason, where they go, what to do; no URLs
    msg = str(e.value)
    assert msg.startswith("3 model file(s) missing: downloading is off.")
    assert all(f"toy/{f.id}" in msg for f in m.files)
    assert str(tmp_path / "models" / "portrait_animation" / "toy" / "adapter") in msg and "1 other folder" in msg
    assert "Switch 'download' on" in msg and "https://" not in msg


def _many_missing(n: int, **extra) -> list:
    files = [ModelFile(id=f"part_{i:02d}", folder="portrait_animation", dest=f"fam/part_{i:02d}/model.safetensors",
                       repo_id="org/big-model", path=f"part_{i:02d}/model.safetensors", family="fam", **extra)
             for i in range(n)]
    return [(f, Path("/models/portrait_animation") / f.dest) for f in files]


def test_missing_files_message_stays_short_for_many_files():
    missing = _many_missing(24, size=3 * 2**30)
    e = MissingModelFiles(missing, reason="offline mode (HF_HUB_OFFLINE) is set",
                          hint="Unset HF_HUB_OFFLINE to download, or place the files there by hand.")
    lines = str(e).splitlines()
    assert len(lines) <= 6 and max(map(len, lines)) <= MissingModelFiles.LINE_WIDTH, str(e)
    assert lines[0] == "24 model file(s) missing: offline mode (HF_HUB_OFFLINE) is set."
    assert "(72.0 GB)" in lines[1] and "fam/part_00" in lines[1] and lines[1].endswith("more)")
    shown = sum(f"fam/part_{i:02d}" in lines[1] for i in range(24))
    assert lines[1].endswith(f"(+{24 - shown} more)")
    assert lines[2] == "Destination: /models/portrait_animation/fam"
    assert "Unset HF_HUB_OFFLINE" in str(e)
    assert all(f.source in e.report for f, _ in missing)  # nothing is lost: the report has every file


def test_missing_files_message_sizes_and_download_errors():
    missing = _many_missing(3)
    assert "(" not in str(MissingModelFiles(missing)).splitlines()[1]  # no size known: none claimed
    missing[0] = (dataclasses.replace(missing[0][0], size=5 * 2**20), missing[0][1])  # one size known
    assert "Files (at least 5.0 MB)" in str(MissingModelFiles(missing))
    errors = {f.id: f"ConnectionError: refused by host {i} " + "x" * 200 for i, (f, _) in enumerate(missing)}
    e = MissingModelFiles(missing, reason="download failed", errors=errors)
    first = str(e).splitlines()[0]
    assert first.startswith("3 model file(s) missing: download failed (ConnectionError: refused by host 0")
    assert len(first) <= MissingModelFiles.LINE_WIDTH
    assert all(err in e.report for err in errors.values())  # each file's full error stays in the report


def test_offline_mode_reports_missing_without_network(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingModelFiles, match="offline"):
        ModelStore.at(tmp_path).ensure(manifest().files, download=True)
    assert hub.requests == []


def test_download_lands_in_the_right_folders(tmp_path, hub):
    m = manifest()
    store = ModelStore.at(tmp_path / "models")
    seen = []
    paths = store.ensure(m.files, download=True, progress=lambda f, done, total: seen.append((f.id, done, total)))
    assert paths["adapter"] == tmp_path / "models/portrait_animation/toy/adapter/diffusion_pytorch_model.safetensors"
    assert paths["vae"] == tmp_path / "models/vae/toy-vae.safetensors"
    assert paths["adapter"].read_bytes() == WEIGHTS
    assert paths["adapter_config"].read_bytes() == CONFIG
    # no staging folders or partial files are left behind
    leftovers = [p for p in (tmp_path / "models").rglob("*") if ".download" in p.name or p.suffix == ".incomplete"]
    assert leftovers == []
    # progress reached the full size of the weights
    assert ("adapter", len(WEIGHTS), len(WEIGHTS)) in seen
    # a second call finds everything locally and does not touch the network
    n = len(hub.requests)
    assert store.ensure(m.files, download=True) == paths
    assert len(hub.requests) == n


def test_only_selected_groups_are_downloaded(tmp_path, hub):
    m = manifest()
    ModelStore.at(tmp_path).ensure(m.select(groups=["vae"]), download=True)
    assert (tmp_path / "vae/toy-vae.safetensors").is_file()
    assert not (tmp_path / "portrait_animation").exists()


def test_corrupt_download_is_detected_and_not_installed(tmp_path, hub):
    bad = bytearray(WEIGHTS)
    bad[-1] ^= 0xFF  # same size, wrong content: the hub's sha256 (etag) no longer matches
    hub.add("org/toy-vae", "vae.safetensors", bytes(bad), advertised_sha256=hashlib.sha256(WEIGHTS).hexdigest())
    store = ModelStore.at(tmp_path)
    with pytest.raises(CorruptModelFile) as e:
        store.ensure(manifest().select(groups=["vae"]), download=True)
    assert "vae" in str(e.value) and "sha256" in str(e.value)
    assert not (tmp_path / "vae/toy-vae.safetensors").exists()


def test_corrupt_download_against_hub_checksum_without_manifest_checksum(tmp_path, hub):
    bad = bytearray(WEIGHTS)
    bad[100] ^= 0xFF
    hub.add("org/toy-adapter", "unet/diffusion_pytorch_model.safetensors", bytes(bad),
            advertised_sha256=hashlib.sha256(WEIGHTS).hexdigest())
    with pytest.raises(CorruptModelFile, match="adapter"):
        ModelStore.at(tmp_path).ensure(manifest().select(ids=["adapter"]), download=True)
    assert not (tmp_path / "portrait_animation/toy/adapter/diffusion_pytorch_model.safetensors").exists()


def test_interrupted_download_leaves_nothing_and_is_reported(tmp_path, hub):
    hub.add("org/toy-vae", "vae.safetensors", WEIGHTS, drop_after=100)
    with pytest.raises(MissingModelFiles) as e:
        ModelStore.at(tmp_path).ensure(manifest().select(groups=["vae"]), download=True)
    assert "download failed" in str(e.value)
    assert not any((tmp_path / "vae").rglob("*.safetensors"))


def test_unknown_repo_file_is_reported_as_missing(tmp_path, hub):
    m = manifest(vae={"path": "nope.safetensors"})
    with pytest.raises(MissingModelFiles) as e:
        ModelStore.at(tmp_path).ensure(m.select(groups=["vae"]), download=True)
    assert "nope.safetensors" in e.value.report and "toy/vae" in str(e.value)


def test_truncated_local_file_is_named(tmp_path):
    m = manifest()
    dest = tmp_path / "vae/toy-vae.safetensors"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(WEIGHTS[:-10])
    with pytest.raises(CorruptModelFile) as e:
        ModelStore.at(tmp_path).ensure(m.select(groups=["vae"]))
    assert "toy/vae" in str(e.value) and "truncated" in str(e.value) and str(dest) in str(e.value)


def test_truncated_safetensors_detected_without_known_size(tmp_path):
    p = tmp_path / "w.safetensors"
    p.write_bytes(WEIGHTS[:-4])
    assert "should end at byte" in check_file_format(p)
    p.write_bytes(WEIGHTS)
    assert check_file_format(p) is None
    p.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    assert "does not fit" in check_file_format(p)


def test_deep_check_catches_bitflip_with_known_checksum(tmp_path):
    m = manifest()
    dest = tmp_path / "vae/toy-vae.safetensors"
    dest.parent.mkdir(parents=True)
    bad = bytearray(WEIGHTS)
    bad[-1] ^= 1
    dest.write_bytes(bytes(bad))
    ModelStore.at(tmp_path).ensure(m.select(groups=["vae"]))  # size and structure are fine
    with pytest.raises(CorruptModelFile, match="sha256"):
        ModelStore.at(tmp_path).ensure(m.select(groups=["vae"]), deep_check=True)


def test_extra_folders_are_searched_in_order(tmp_path):
    m = manifest()
    first, second = tmp_path / "a", tmp_path / "b"
    dest = second / "toy-vae.safetensors"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(WEIGHTS)
    store = ModelStore(folders=lambda key: [first, second] if key == "vae" else [tmp_path / key])
    assert store.ensure(m.select(groups=["vae"])) == {"vae": dest}
    assert store.destination(m.file("vae")) == first / "toy-vae.safetensors"  # downloads go to the first folder


def test_url_source_downloads_through_http(tmp_path, hub):
    base = hub.server.server_address
    f = ModelFile(id="task", folder="portrait_animation", dest="face/model.task",
                  url=f"http://{base[0]}:{base[1]}/org/toy-vae/resolve/main/vae.safetensors", family="face")
    path = ModelStore.at(tmp_path).ensure([f], download=True)["task"]
    assert path.read_bytes() == WEIGHTS


def test_manifest_validation_rejects_bad_entries():
    good = {"id": "x", "repo_id": "o/r", "path": "a.bin", "folder": "vae", "dest": "a.bin"}
    parse_manifest({"family": "t", "files": [good]})
    with pytest.raises(ValueError, match="unknown folder"):
        parse_manifest({"family": "t", "files": [dict(good, folder="nowhere")]})
    with pytest.raises(ValueError, match="unsafe"):
        parse_manifest({"family": "t", "files": [dict(good, dest="../../etc/x")]})
    with pytest.raises(ValueError, match="duplicate"):
        parse_manifest({"family": "t", "files": [good, good]})
    with pytest.raises(ValueError, match="exactly one"):
        parse_manifest({"family": "t", "files": [dict(good, url="http://x")]})


def test_url_mirrors_rewrite_the_longest_matching_prefix(monkeypatch):
    from portrait_animation.loaders.store import URL_MIRRORS_ENV, mirrored_url

    url = "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task"
    monkeypatch.delenv(URL_MIRRORS_ENV, raising=False)
    assert mirrored_url(url) == url
    monkeypatch.setenv(URL_MIRRORS_ENV, "https://storage.googleapis.com/=http://m/gcs/ ; "
                                        "https://storage.googleapis.com/mediapipe-models/=http://m/mp/")
    assert mirrored_url(url) == "http://m/mp/face_landmarker/face_landmarker/float16/1/face_landmarker.task"
    assert mirrored_url("https://example.com/x") == "https://example.com/x"
    monkeypatch.setenv(URL_MIRRORS_ENV, "no-equals-sign")
    with pytest.raises(ValueError, match=URL_MIRRORS_ENV):
        mirrored_url(url)
