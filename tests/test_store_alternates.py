"""The store finds weights users already have: alternate names and folders, the Hugging Face and ModelScope caches.

Each alternate rule (any file there, size, sha256, key probe) is exercised on a temporary models folder, fake hub
caches are laid out the way huggingface_hub and modelscope write them, and the real manifests' alternates (MEMO's
IF_MemoAvatar layout, the LDM VAE, wav2vec2's pytorch_model.bin, emotion2vec in the ModelScope cache, insightface's
antelopev2 pack) are found where users keep them. The Model Files report is produced by the node's core function.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil

import pytest
import torch
from safetensors.torch import save

from portrait_animation.loaders.manifest import MANIFEST_DIR, available_families, load_manifest, parse_manifest
from portrait_animation.loaders.store import (HubCaches, Located, MissingModelFiles, ModelFileError, ModelStore,
                                              check_model_files, model_files_report)

from helpers.loopback_hub import LoopbackHub

WEIGHTS = save({"a": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(5)})
OTHER = save({"a": torch.zeros(3, 4), "b": torch.zeros(5)})  # same size and structure, other content
COMMIT = "1" * 40
OLD_COMMIT = "2" * 40
NO_CACHES = HubCaches(hf=None, modelscope=None)


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def hf_cache_file(cache, repo_id: str, path: str, data: bytes, commit: str = COMMIT, ref: str | None = "main"):
    """Lay a file out like huggingface_hub: blobs/<sha256>, snapshots/<commit>/<path> -> blob, refs/<branch>."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blob = write(repo / "blobs" / hashlib.sha256(data).hexdigest(), data)
    snap = repo / "snapshots" / commit / path
    snap.parent.mkdir(parents=True, exist_ok=True)
    if not snap.exists():
        os.symlink(os.path.relpath(blob, snap.parent), snap)
    if ref:
        write(repo / "refs" / ref, commit.encode())
    return snap


def toy(alternates=(), size=None, revision="main"):
    return parse_manifest({"family": "toy", "files": [
        {"id": "w", "repo_id": "org/toy", "path": "unet/w.safetensors", "revision": revision,
         "folder": "portrait_animation", "dest": "toy/w.safetensors", "size": size, "groups": ["g"],
         "alternates": list(alternates)}]}).file("w")


# ------------------------------------------------------------------------------------------------- the four rules


def test_any_rule_accepts_a_named_alternate_and_copies_nothing(tmp_path, caplog):
    f = toy([{"folder": "other_pack", "path": "nested/w.safetensors", "accept": "any", "note": "other pack"}])
    alt = write(tmp_path / "other_pack/nested/w.safetensors", WEIGHTS)
    store = ModelStore.at(tmp_path, caches=NO_CACHES)
    loc = store.locate(f)
    assert isinstance(loc, Located) and loc.path == alt and loc.how == "alternate" and not loc.canonical
    assert "known name" in loc.reason and "other pack" in loc.reason
    assert os.fspath(loc) == str(alt)
    with caplog.at_level(logging.INFO, logger="portrait_animation"):
        assert store.ensure([f]) == {"w": alt}
    assert not store.destination(f).exists()  # nothing copied
    assert any("toy/w: using" in r.getMessage() and str(alt) in r.getMessage() for r in caplog.records)


def test_size_rule(tmp_path):
    f = toy([{"folder": "x", "path": "w.safetensors", "accept": "size", "size": len(WEIGHTS)}])
    p = write(tmp_path / "x/w.safetensors", WEIGHTS)
    store = ModelStore.at(tmp_path, caches=NO_CACHES)
    assert store.locate(f).path == p and "size matched" in store.locate(f).reason
    write(p, save({"a": torch.zeros(2)}))
    loc, skipped = store.lookup(f)
    assert loc is None and "size is" in skipped[0].why


def test_sha256_rule_accepts_only_the_official_bytes(tmp_path, caplog):
    rule = {"folder": "x", "path": "w.safetensors", "accept": "sha256", "size": len(WEIGHTS),
            "sha256": hashlib.sha256(WEIGHTS).hexdigest()}
    f = toy([rule])
    p = write(tmp_path / "x/w.safetensors", WEIGHTS)
    store = ModelStore.at(tmp_path, caches=NO_CACHES)
    assert store.locate(f).path == p and "sha256 matched" in store.locate(f).reason
    write(p, OTHER)  # same size: only the hash tells them apart
    assert len(OTHER) == len(WEIGHTS)
    with caplog.at_level(logging.WARNING, logger="portrait_animation"):
        loc, skipped = store.lookup(f)
    assert loc is None and "sha256 is" in skipped[0].why
    assert any("not using" in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records)


def test_keys_rule_reads_safetensors_header_and_pickled_checkpoints(tmp_path):
    probe = [{"name": "enc.proj.weight", "shape": [8, 4]}]
    f = parse_manifest({"family": "toy", "files": [
        {"id": "w", "repo_id": "org/toy", "path": "w.bin", "folder": "portrait_animation", "dest": "toy/w.bin",
         "groups": ["g"], "alternates": [
             {"folder": "x", "path": "a.safetensors", "accept": "keys", "keys": probe},
             {"folder": "x", "path": "b.bin", "accept": "keys", "keys": probe}]}]}).file("w")
    store = ModelStore.at(tmp_path, caches=NO_CACHES)
    write(tmp_path / "x/a.safetensors", save({"enc.proj.weight": torch.zeros(16, 4)}))  # wrong shape
    b = tmp_path / "x/b.bin"
    torch.save({"state_dict": {"enc.proj.weight": torch.zeros(8, 4)}}, b)
    loc, skipped = store.lookup(f)
    assert loc.path == b and "key probe matched" in loc.reason
    assert skipped[0].path == tmp_path / "x/a.safetensors" and "shape [16, 4], expected [8, 4]" in skipped[0].why


def test_damaged_alternate_is_skipped_not_used(tmp_path):
    f = toy([{"folder": "x", "path": "w.safetensors", "accept": "any"}])
    write(tmp_path / "x/w.safetensors", WEIGHTS[:-3])
    loc, skipped = ModelStore.at(tmp_path, caches=NO_CACHES).lookup(f)
    assert loc is None and "damaged" in skipped[0].why


def test_alternate_validation():
    with pytest.raises(ValueError, match="needs a well-formed sha256"):
        toy([{"folder": "x", "path": "w", "accept": "sha256"}])
    with pytest.raises(ValueError, match="takes no size"):
        toy([{"folder": "x", "path": "w", "accept": "any", "size": 3}])
    with pytest.raises(ValueError, match="exactly one of folder or cache"):
        toy([{"path": "w", "accept": "any"}])
    with pytest.raises(ValueError, match="unsafe path"):
        toy([{"folder": "x", "path": "../w", "accept": "any"}])
    with pytest.raises(ValueError, match="unknown fields"):
        toy([{"folder": "x", "path": "w", "accept": "any", "hash": "x"}])


# ----------------------------------------------------------------------------------------------------- the caches


def test_hf_cache_entry_repo_prefers_the_ref_snapshot(tmp_path):
    cache = tmp_path / "hf"
    hf_cache_file(cache, "org/toy", "unet/w.safetensors", OTHER, commit=OLD_COMMIT, ref=None)
    current = hf_cache_file(cache, "org/toy", "unet/w.safetensors", WEIGHTS, commit=COMMIT)
    store = ModelStore.at(tmp_path / "models", caches=HubCaches(hf=cache))
    loc = store.locate(toy())
    assert loc.path == current and loc.how == "hf_cache" and f"org/toy@{COMMIT[:8]}" in loc.reason
    assert store.ensure([toy()])["w"].read_bytes() == WEIGHTS  # through the snapshot symlink


def test_hf_cache_pinned_revision_only_accepts_its_snapshot(tmp_path):
    cache = tmp_path / "hf"
    hf_cache_file(cache, "org/toy", "unet/w.safetensors", WEIGHTS, commit=COMMIT)
    store = ModelStore.at(tmp_path / "models", caches=HubCaches(hf=cache))
    assert store.locate(toy(revision=OLD_COMMIT)) is None
    assert store.locate(toy(revision=COMMIT)).how == "hf_cache"


def test_hf_cache_file_of_another_size_is_skipped_when_the_size_is_known(tmp_path):
    cache = tmp_path / "hf"
    hf_cache_file(cache, "org/toy", "unet/w.safetensors", save({"a": torch.zeros(1)}))
    loc, skipped = ModelStore.at(tmp_path / "models", caches=HubCaches(hf=cache)).lookup(toy(size=len(WEIGHTS)))
    assert loc is None and "size is" in skipped[0].why


@pytest.mark.parametrize("sub", ["models", ""])
def test_modelscope_cache_both_layouts(tmp_path, sub):
    ms = tmp_path / "ms"
    p = write(ms / sub / "org" / "toy" / "unet/w.safetensors", WEIGHTS)
    loc = ModelStore.at(tmp_path / "models", caches=HubCaches(modelscope=ms)).locate(toy())
    assert loc.path == p and loc.how == "modelscope_cache"


def test_cache_locations_from_the_environment(tmp_path, monkeypatch):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "MODELSCOPE_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = HubCaches.from_env()
    assert default.hf == tmp_path / "home/.cache/huggingface/hub"
    assert default.modelscope == tmp_path / "home/.cache/modelscope/hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert HubCaches.from_env().hf == tmp_path / "hfhome/hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hubcache"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "mscache"))
    assert HubCaches.from_env() == HubCaches(hf=tmp_path / "hubcache", modelscope=tmp_path / "mscache")


def test_plain_store_searches_no_cache(tmp_path):
    hf_cache_file(tmp_path / "hf", "org/toy", "unet/w.safetensors", WEIGHTS)
    assert ModelStore.at(tmp_path / "models").locate(toy()) is None


# ---------------------------------------------------------------------------------------------------------- order


def test_lookup_order_canonical_then_alternates_then_hf_then_modelscope(tmp_path):
    f = toy([{"folder": "x", "path": "first.safetensors", "accept": "any"},
             {"folder": "x", "path": "second.safetensors", "accept": "any"}])
    hf, ms = tmp_path / "hf", tmp_path / "ms"
    store = ModelStore.at(tmp_path / "models", caches=HubCaches(hf=hf, modelscope=ms))
    places = [write(ms / "org/toy/unet/w.safetensors", WEIGHTS),
              hf_cache_file(hf, "org/toy", "unet/w.safetensors", WEIGHTS),
              write(tmp_path / "models/x/second.safetensors", WEIGHTS),
              write(tmp_path / "models/x/first.safetensors", WEIGHTS),
              write(store.destination(f), WEIGHTS)]
    hows = []
    for expected in reversed(places):  # remove the winner each time: the next one in order takes over
        loc = store.locate(f)
        assert loc.path == expected
        hows.append(loc.how)
        expected.unlink()
    assert hows == ["canonical", "alternate", "alternate", "hf_cache", "modelscope_cache"]
    assert store.locate(f) is None


def test_canonical_wins_even_when_an_alternate_exists(tmp_path):
    m = load_manifest("memo")
    store = ModelStore.at(tmp_path, caches=NO_CACHES)
    write(tmp_path / "vae/vae-ft-mse-840000-ema-pruned.safetensors", WEIGHTS)
    canonical = write(store.destination(m.file("vae")), WEIGHTS)
    loc = store.locate(m.file("vae"))
    assert loc.path == canonical and loc.canonical and loc.layout is None


# ------------------------------------------------------------------------------------ the real manifests' alternates


def test_memo_files_in_the_if_memoavatar_layout(tmp_path):
    m = load_manifest("memo")
    core = [f for f in m.select(groups=["core"]) if f.repo_id == "memoavatar/memo"]
    for f in core:
        write(tmp_path / "checkpoints/memo" / f.path, WEIGHTS if f.path.endswith(".safetensors") else b"{}")
    found = ModelStore.at(tmp_path, caches=NO_CACHES).ensure_located(core)
    assert {f.id: found[f.id].path for f in core} == {f.id: tmp_path / "checkpoints/memo" / f.path for f in core}
    assert all(loc.how == "alternate" and "IF_MemoAvatar" in loc.reason for loc in found.values())


@pytest.mark.parametrize("name,layout", [
    ("vae-ft-mse-840000-ema-pruned.safetensors", "ldm"),
    ("stabilityai/sd-vae-ft-mse/diffusion_pytorch_model.safetensors", None)])
def test_memo_vae_under_comfyui_names_carries_its_layout(tmp_path, name, layout):
    p = write(tmp_path / "vae" / name, WEIGHTS)
    loc = ModelStore.at(tmp_path, caches=NO_CACHES).locate(load_manifest("memo").file("vae"))
    assert loc.path == p and loc.layout == layout


def test_memo_vae_ldm_ckpt(tmp_path):
    p = tmp_path / "vae/vae-ft-mse-840000-ema-pruned.ckpt"
    p.parent.mkdir(parents=True)
    torch.save({"state_dict": {"decoder.conv_in.weight": torch.zeros(2, 2)}}, p)
    loc = ModelStore.at(tmp_path, caches=NO_CACHES).locate(load_manifest("memo").file("vae"))
    assert loc.path == p and loc.layout == "ldm"


def test_wav2vec2_pytorch_model_bin_and_probe(tmp_path):
    f = load_manifest("memo").file("wav2vec2_base_960h")
    store = ModelStore.at(tmp_path, caches=NO_CACHES)
    renamed = tmp_path / "audio_encoders/wav2vec2-base-960h.bin"
    renamed.parent.mkdir(parents=True)
    large = {"wav2vec2.feature_projection.projection.weight": torch.zeros(1024, 512),
             "wav2vec2.encoder.layers.11.final_layer_norm.weight": torch.zeros(1024)}
    torch.save(large, renamed)  # wav2vec2-large under the base model's name: the probe rejects it
    loc, skipped = store.lookup(f)
    assert loc is None and "[1024, 512], expected [768, 512]" in skipped[0].why
    torch.save({"wav2vec2.feature_projection.projection.weight": torch.zeros(768, 512),
                "wav2vec2.encoder.layers.11.final_layer_norm.weight": torch.zeros(768)}, renamed)
    assert store.locate(f).path == renamed
    if_copy = tmp_path / "wav2vec/facebook/wav2vec2-base-960h/pytorch_model.bin"
    if_copy.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, if_copy)
    assert store.locate(f).path == if_copy  # listed before the renamed copy


def test_emotion2vec_in_the_modelscope_cache_and_the_if_folder(tmp_path):
    m = load_manifest("memo")
    files = m.select(ids=["emotion2vec_model", "emotion2vec_config"])
    ms = tmp_path / "ms"
    torch.save({"w": torch.zeros(2)}, write(ms / "models/iic/emotion2vec_plus_large/model.pt", b""))
    write(ms / "models/iic/emotion2vec_plus_large/config.yaml", b"model: Emotion2vec\n")
    store = ModelStore.at(tmp_path / "models", caches=HubCaches(modelscope=ms))
    found = store.ensure_located(files)
    assert {loc.how for loc in found.values()} == {"modelscope_cache"}
    assert found["emotion2vec_model"].path.parent == found["emotion2vec_config"].path.parent  # one folder
    folder = tmp_path / "models/emotion2vec/iic/emotion2vec_plus_large"
    torch.save({"w": torch.zeros(2)}, write(folder / "model.pt", b""))
    assert store.locate(files[0]).path == folder / "model.pt"  # ComfyUI folders come before the caches


def test_hellomeme_sd15_under_comfyui_names_and_songkey_repos_in_caches(tmp_path):
    m = load_manifest("hellomeme")
    hf, ms = tmp_path / "hf", tmp_path / "ms"
    store = ModelStore.at(tmp_path / "models", caches=HubCaches(hf=hf, modelscope=ms))
    fp16 = write(tmp_path / "models/checkpoints/v1-5-pruned-emaonly-fp16.safetensors", WEIGHTS)
    assert store.locate(m.file("sd15_checkpoint")).path == fp16
    fp16.unlink()
    archived = hf_cache_file(hf, "Comfy-Org/stable-diffusion-v1-5-archive", "v1-5-pruned-emaonly.safetensors", WEIGHTS)
    assert store.locate(m.file("sd15_checkpoint")).path == archived
    ref = hf_cache_file(hf, "songkey/hm5_reference", "diffusion_pytorch_model.safetensors", WEIGHTS)
    hf_cache_file(hf, "songkey/hm5_reference", "config.json", b"{}")
    found = store.ensure_located(m.select(ids=["hm5_reference", "hm5_reference_config"]))
    assert found["hm5_reference"].path == ref and found["hm5_reference_config"].path.parent == ref.parent
    landmark = write(ms / "songkey/hello_group_facemodel/hello_face_landmark.onnx", b"onnx" * 40)
    assert store.locate(m.file("hello_face_landmark")).path == landmark


def test_antelopev2_file_with_the_wrong_hash_is_not_used(tmp_path, caplog):
    f = load_manifest("memo").file("insightface_glintr100")
    rule = next(a for a in f.alternates if a.folder == "insightface")
    assert rule.accept == "sha256" and rule.size == 260_665_334
    fake = write(tmp_path / "insightface/models/antelopev2/glintr100.onnx", b"x" * 1000)
    with caplog.at_level(logging.WARNING, logger="portrait_animation"):
        loc, skipped = ModelStore.at(tmp_path, caches=NO_CACHES).lookup(f)
    assert loc is None and skipped[0].path == fake
    assert "size is 1000 bytes, the wanted file has 260665334" in skipped[0].why
    assert any("memo/insightface_glintr100: not using" in r.getMessage() for r in caplog.records)
    report = model_files_report("memo", "face", ModelStore.at(tmp_path, caches=NO_CACHES))
    assert f"skipped {fake}: size is 1000 bytes" in report


def test_antelopev2_same_size_other_bytes_is_rejected_by_hash(tmp_path):
    """A sparse file of the official size: the size rule passes, the sha256 rule decides (and rejects it)."""
    f = load_manifest("memo").file("insightface_scrfd_10g_bnkps")
    rule = next(a for a in f.alternates if a.folder == "insightface")
    p = tmp_path / "insightface/models/antelopev2/scrfd_10g_bnkps.onnx"
    p.parent.mkdir(parents=True)
    with open(p, "wb") as fh:
        fh.truncate(rule.size)
    loc, skipped = ModelStore.at(tmp_path, caches=NO_CACHES).lookup(f)
    assert loc is None and f"the official file's is {rule.sha256}" in skipped[0].why


# ----------------------------------------------------------------------------------------- report and HunyuanPortrait


def test_report_says_which_file_each_entry_uses_and_why(tmp_path):
    m = load_manifest("memo")
    store = ModelStore.at(tmp_path, caches=NO_CACHES)
    ldm = write(tmp_path / "vae/vae-ft-mse-840000-ema-pruned.safetensors", WEIGHTS)
    bin_copy = tmp_path / "wav2vec/facebook/wav2vec2-base-960h/pytorch_model.bin"
    bin_copy.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, bin_copy)
    files = m.select(groups=["core", "audio"])
    canonical = [f for f in files if f.repo_id == "memoavatar/memo"]
    for f in canonical:
        write(store.destination(f), WEIGHTS if f.path.endswith(".safetensors") else b"{}".ljust(f.size or 2))
    report = check_model_files(store, files)
    lines = report.splitlines()
    assert len(lines) == len(files) and report.count("ok ") == len(files)
    by_id = {f.id: line for f, line in zip(files, lines)}
    assert by_id["vae"].startswith("memo/vae (unknown size): ok   " + str(ldm))
    assert "[alternate name: known name; ComfyUI's usual name" in by_id["vae"] and "LDM" in by_id["vae"]
    assert f"ok   {bin_copy}  [alternate name: known name; IF_MemoAvatar layout" in by_id["wav2vec2_base_960h"]
    for f in canonical:
        assert by_id[f.id].endswith(f"ok   {store.destination(f)}  [canonical destination]")


def test_missing_files_report_destination_and_download_url(tmp_path):
    store = ModelStore.at(tmp_path, caches=NO_CACHES)
    f = load_manifest("memo").file("vae")
    report = model_files_report("memo", "core", store)
    line = next(l for l in report.splitlines() if l.startswith("memo/vae "))
    url = "https://huggingface.co/stabilityai/sd-vae-ft-mse/resolve/main/diffusion_pytorch_model.safetensors"
    assert line == f"memo/vae (unknown size): MISSING -> {tmp_path}/vae/sd-vae-ft-mse.safetensors  (download: {url})"
    assert f.source.endswith("/resolve/main/diffusion_pytorch_model.safetensors")


def test_missing_error_names_the_files_found_elsewhere(tmp_path):
    m = load_manifest("memo")
    write(tmp_path / "vae/vae-ft-mse-840000-ema-pruned.safetensors", WEIGHTS)
    with pytest.raises(MissingModelFiles) as e:
        check_model_files(ModelStore.at(tmp_path, caches=NO_CACHES), m.select(ids=["vae", "wav2vec2_base_960h"]))
    msg = str(e.value)
    assert msg.startswith("1 model file(s) missing: downloading is off.")
    assert "memo/wav2vec2_base_960h" in msg and "resolve/main/model.safetensors" in e.value.report
    assert "Found under other names or folders" in msg and "vae-ft-mse-840000-ema-pruned.safetensors" in msg
    assert "vae-ft-mse-840000-ema-pruned.safetensors" in e.value.report
    assert [f.id for f, _ in e.value.missing] == ["wav2vec2_base_960h"]
    assert [(f.id, loc.how) for f, loc in e.value.found_elsewhere] == [("vae", "alternate")]


@pytest.fixture
def hub(monkeypatch):
    h = LoopbackHub()
    m = load_manifest("hunyuan_portrait")
    for f in m.files:
        h.add(f.repo_id, f.path, WEIGHTS)
    monkeypatch.setenv("HF_ENDPOINT", h.start())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield h
    h.stop()


def test_unavailable_family_is_never_downloaded(tmp_path, hub):
    """A manifest marked "unavailable" (the gate for a family no node can run) is never fetched, whichever node asks."""
    data = json.loads((MANIFEST_DIR / "hunyuan_portrait.json").read_text())
    m = parse_manifest(dict(data, unavailable="held back for this test"))
    store = ModelStore.at(tmp_path, caches=NO_CACHES)
    with pytest.raises(MissingModelFiles, match="not downloaded: held back for this test"):
        store.ensure(m.select(groups=["motion"]), download=True)
    with pytest.raises(ModelFileError, match="hunyuan_portrait/unet is not downloaded"):
        store.download(m.file("unet"))
    assert hub.requests == [] and not any(tmp_path.rglob("*.pth"))


def test_hunyuan_portrait_downloads_and_finds_other_packs_files(tmp_path, hub):
    """HunyuanPortrait runs in the pack now: offered by Model Files, downloaded into the official layout, and the
    files of ComfyUI_HunyuanPortrait / ComfyUI_Sonic users are found first (nothing fetched for them)."""
    assert "hunyuan_portrait" in available_families(downloadable_only=True)
    m = load_manifest("hunyuan_portrait")
    bob = tmp_path / "HunyuanPortrait"
    (bob / "hyportrait").mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, bob / "hyportrait" / "expression.pth")
    (tmp_path / "sonic").mkdir()
    shutil.copy(bob / "hyportrait" / "expression.pth", tmp_path / "sonic" / "yoloface_v5m.pt")
    store = ModelStore.at(tmp_path, caches=NO_CACHES)
    located = store.ensure_located(m.select(groups=["motion", "face"]), download=True)
    assert located["expression"].path == bob / "hyportrait" / "expression.pth"
    assert located["yoloface_v5m"].path == tmp_path / "sonic" / "yoloface_v5m.pt"
    canonical = tmp_path / "portrait_animation" / "hunyuan_portrait" / "hyportrait"
    assert located["headpose"].path == canonical / "headpose.pth"
    asked = " ".join(str(r) for r in hub.requests)
    assert "headpose.pth" in asked and "expression.pth" not in asked and "yoloface_v5m.pt" not in asked, asked
    assert "not offered for download" not in model_files_report("hunyuan_portrait", "motion", store)


def test_located_stands_in_for_a_path(tmp_path):
    """Loaders written when locate() returned a Path keep working with the record."""
    p = write(tmp_path / "models/portrait_animation/toy/w.safetensors", WEIGHTS)
    loc = ModelStore.at(tmp_path / "models").locate(toy())
    assert loc.canonical and loc.path == p
    assert (str(loc), loc.parent, loc.suffix, loc.is_file()) == (str(p), p.parent, ".safetensors", True)
    import copy
    import pickle

    assert pickle.loads(pickle.dumps(loc)) == loc and copy.deepcopy(loc) == loc


def test_svd_checkpoint_stands_in_for_the_svd_vae_only_with_its_decoder(tmp_path):
    """ComfyUI's SVD single file is taken for HunyuanPortrait's VAE when its header has the temporal decoder; an image
    checkpoint under the same name is skipped with the reason."""
    m = load_manifest("hunyuan_portrait")
    ckpt = tmp_path / "checkpoints" / "svd_xt.safetensors"
    store = ModelStore.at(tmp_path, caches=NO_CACHES)
    write(ckpt, save({"first_stage_model.decoder.conv_in.weight": torch.zeros(2)}))
    assert store.locate(m.file("svd_xt_vae")) is None
    write(ckpt, save({"first_stage_model.decoder.mid.block_1.mix_factor": torch.zeros(1),
                      "first_stage_model.decoder.conv_out.time_mix_conv.weight": torch.zeros(3, 3, 3, 1, 1)}))
    loc = store.locate(m.file("svd_xt_vae"))
    assert loc.path == ckpt and loc.how == "alternate" and "SVD" in loc.reason
