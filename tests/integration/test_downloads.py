"""Model downloads inside a real ComfyUI, from the loopback hub: right folders, corruption reported."""
from __future__ import annotations

import hashlib
import io
import json

import torch
from safetensors.torch import save

from portrait_animation.loaders.manifest import load_manifest

from .comfy import status_messages


def fake_content(path: str) -> bytes:
    """Small files that pass the store's structural checks for their type."""
    if path.endswith(".safetensors"):
        return save({"w": torch.arange(16, dtype=torch.float32)})
    if path.endswith((".pt", ".pth", ".bin")):
        buf = io.BytesIO()
        torch.save({"w": torch.zeros(4)}, buf)
        return buf.getvalue()
    if path.endswith(".json"):
        return json.dumps({"_class_name": "Fake", "for": path}).encode()
    return f"fake content of {path}\n".encode()


def model_files_prompt(family: str, groups: str, download: bool) -> dict:
    return {"1": {"class_type": "PortraitAnim_ModelFiles",
                  "inputs": {"family": family, "groups": groups, "download": download, "verify_checksums": False}}}


def serve_group(hub, family: str, groups: list[str]):
    files = load_manifest(family).select(groups=groups)
    for f in files:
        data = fake_content(f.path)
        if f.size is not None:  # keep the manifest's known size: pad JSON with spaces
            data = data + b" " * (f.size - len(data)) if len(data) <= f.size else data[: f.size]
        hub.add(f.repo_id, f.path, data)
    return files


def test_download_lands_in_the_configured_folders(comfy_server, loopback_hub):
    # a group no other test stages or expects missing: its files are removed again below (the server is shared)
    files = serve_group(loopback_hub, "hellomeme", ["expression_arkit"])
    paths = {f.id: (comfy_server.extra_models_dir / f.dest if f.folder == "portrait_animation"  # extra_model_paths
                    else comfy_server.models_dir / f.folder / f.dest) for f in files}  # a standard ComfyUI folder
    try:
        entry = comfy_server.run(model_files_prompt("hellomeme", "expression_arkit", True))
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
        for f in files:
            assert paths[f.id].is_file(), f"{f.id} not at {paths[f.id]}"
            assert paths[f.id].read_bytes() == loopback_hub.files[(f.repo_id, f.path)].data
        assert any(f.folder == "clip_vision" for f in files) and any(f.folder == "portrait_animation" for f in files)
        report = entry["outputs"]["1"]["text"][0]
        assert report.count("ok ") == len(files) and "MISSING" not in report
        assert report.count("[canonical destination]") == len(files)
        leftovers = [p for p in comfy_server.workdir.rglob("*") if p.name.startswith(".download-")]
        assert leftovers == []
    finally:
        for path in paths.values():
            path.unlink(missing_ok=True)


def test_corrupt_download_is_reported_and_not_installed(comfy_server, loopback_hub):
    f = load_manifest("memo").file("insightface_scrfd_10g_bnkps")
    good = b"onnx model bytes" * 64
    loopback_hub.add(f.repo_id, f.path, b"tampered" + good[8:], advertised_sha256=hashlib.sha256(good).hexdigest())
    face = load_manifest("memo").select(groups=["face"])
    for other in face:
        if other.id != f.id:
            loopback_hub.add(other.repo_id, other.path, b"onnx" * 100)
    # the server holds stand-in face models (the MEMO identity-guard example): set them aside so the group downloads
    aside = {}
    for g in face:
        for path in (comfy_server.models_dir / g.folder / g.dest, comfy_server.extra_models_dir / g.dest):
            if path.exists():
                aside[path] = path.with_name(path.name + ".aside")
                path.rename(aside[path])
    try:
        entry = comfy_server.run(model_files_prompt("memo", "face", True))
        assert entry["status"]["status_str"] == "error"
        msg = status_messages(entry)["execution_error"]["exception_message"]
        assert "memo/insightface_scrfd_10g_bnkps" in msg and "corrupt" in msg and "sha256" in msg, msg
        assert not (comfy_server.extra_models_dir / f.dest).exists()
    finally:
        for g in face:  # what the download did install (the good files of the group) goes again
            path = comfy_server.extra_models_dir / g.dest
            if path not in aside:
                path.unlink(missing_ok=True)
        for path, moved in aside.items():
            path.unlink(missing_ok=True)
            moved.rename(path)
