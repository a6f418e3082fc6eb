"""Model manifests (loaders/manifests/*.json) and embedded configs (loaders/configs/*.json).

Checks that the three family manifests parse, that every file has a source and a destination under a known folder,
that the manifests cover every released file the parity key manifests describe, that the byte sizes the specs and
parity manifests publish are the ones in the pack manifests (and that no other size was made up), and that the
embedded configs hold the architecture values the loaders rely on.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from portrait_animation.loaders.checkpoint import embedded_config
from portrait_animation.loaders.manifest import KNOWN_FOLDERS, MANIFEST_DIR, Manifest, load_manifest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))
PARITY = SHARED / "parity"

FAMILIES = ("hellomeme", "memo", "hunyuan_portrait")

# Exact byte sizes published by the specs / parity manifests, keyed by (family, file id). The pack manifests must
# carry exactly these sizes and no other non-null size (every other size is unknown and must stay null).
PUBLISHED_SIZES = {
    ("hellomeme", "hm5b_reference"): 1_107_788_840,  # parity hellomeme/manifests/hm5b_reference.json
    ("memo", "audio_proj_config"): 72,  # spec memo.md 7.1 + parity memo/manifests/audio_proj.json
    ("memo", "image_proj_config"): 72,  # spec memo.md 7.1 + parity memo/manifests/image_proj.json
    ("memo", "emotion_classifier_config"): 85,  # spec memo.md 7.1 + parity memo/manifests/audio_emotion_classifier.json
}

# parity memo manifest -> pack file id of the config.json whose exact text (and byte count) it records
MEMO_CONFIG_IDS = {
    "audio_proj.json": "audio_proj_config",
    "image_proj.json": "image_proj_config",
    "audio_emotion_classifier.json": "emotion_classifier_config",
}

# HelloMeme version -> the songkey repositories its loader configuration needs (spec hellomeme.md 1 and 3.2)
HELLOMEME_VERSIONS = {
    # v1 / v2 as the pack runs them (PD-FGC expression): their ARKit control nets are groups of their own
    "v1": {"hm_reference", "hm_control2"},
    "v1_video": {"hm_reference", "hm_control2", "hm_animatediff_frame12"},
    "v1_arkit": {"hm_control"},
    "v2": {"hm2_reference", "hm2_control2"},
    "v2_video": {"hm2_reference", "hm2_control2", "hm2_animatediff_frame12"},
    "v2_arkit": {"hm2_control"},
    "v3": {"hm3_reference", "hm3_control_mix"},
    "v3_video": {"hm3_reference", "hm3_control_mix", "hm3_motion", "hm3_animatediff"},
    "v4": {"hm4_reference", "hm_control_base", "hm4_control_proj"},
    "v4_video": {"hm4_reference", "hm_control_base", "hm4_control_proj", "hm4_motion", "hm4_animatediff"},
    "v5": {"hm5_reference", "hm5_control_base", "hm5_control_proj"},
    "v5_video": {"hm5_reference", "hm5_control_base", "hm5_control_proj", "hm5_motion"},
    "v5b": {"hm5b_reference", "hm5_control_base", "hm5_control_proj"},
    "v5b_video": {"hm5b_reference", "hm5_control_base", "hm5_control_proj", "hm5_motion"},
    "v5c": {"hm5c_reference", "hm5_control_base", "hm5c_control_proj"},
}

HEX40 = re.compile(r"^[0-9a-f]{40}$")


def raw(family: str) -> dict:
    return json.loads((MANIFEST_DIR / f"{family}.json").read_text())


def parity_dir(family: str) -> Path:
    d = PARITY / family / "manifests"
    if not d.is_dir():
        pytest.skip(f"parity manifests {d} not found (set SHARED_DIR)")
    return d


def by_source(m: Manifest) -> dict[tuple[str, str], object]:
    return {(f.repo_id, f.path): f for f in m.files if f.repo_id}


# ------------------------------------------------------------------------------------------------- (a) parsing


@pytest.mark.parametrize("family", FAMILIES)
def test_manifest_parses(family):
    m = load_manifest(family)
    assert m.family == family
    assert m.description
    assert len(m.files) >= 8
    data = raw(family)
    # every family runs in the pack, so every family is offered for download (no "unavailable" marking)
    assert set(data) == {"family", "description", "notes", "files"}
    assert m.unavailable is None
    assert len(data["files"]) == len(m.files)


@pytest.mark.parametrize("family", FAMILIES)
def test_groups_are_documented(family):
    m = load_manifest(family)
    documented = set(m.notes.get("groups", {}))
    used = set(m.groups)
    assert used == documented, f"undocumented groups {sorted(used - documented)}, unused {sorted(documented - used)}"
    for g, text in m.notes["groups"].items():
        assert isinstance(text, str) and len(text) > 20, g
    assert m.notes.get("open_questions"), "open questions belong in notes.open_questions"


# ---------------------------------------------------------------------------- (b) sources and destinations


@pytest.mark.parametrize("family", FAMILIES)
def test_every_file_has_source_destination_and_groups(family):
    m = load_manifest(family)
    ids = [f["id"] for f in raw(family)["files"]]
    assert len(ids) == len(set(ids)), "duplicate ids"
    for f in m.files:
        assert f.folder in KNOWN_FOLDERS
        assert bool(f.repo_id) != bool(f.url), f.id
        if f.repo_id:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+", f.repo_id), f.id
            assert f.path and not f.path.startswith("/"), f.id
        assert f.revision == "main" or HEX40.match(f.revision), f.id
        assert f.groups, f"{f.id} belongs to no group"
        assert f.description, f.id
        assert f.dest and not f.dest.startswith("/") and ".." not in Path(f.dest).parts
        assert f.destination == f"models/{f.folder}/{f.dest}"
        if f.folder == "portrait_animation":
            assert f.dest.startswith(f"{family}/"), f"{f.id}: pack files go under {family}/"
            # the file keeps its name (and the repository's own sub-path) inside the pack folder
            assert f.dest.endswith(f.path), f.id
        else:
            # standard folders hold flat files that ComfyUI lists in its dropdowns
            assert "/" not in f.dest, f.id
        assert f.size is None or (isinstance(f.size, int) and f.size > 0)
        # canonical entries track 'main': a published digest of an older upload could reject a current file, so the
        # store verifies downloads against the hub's LFS digest; digests only gate alternates (ALTERNATE_DIGESTS)
        assert f.sha256 is None, f.id
        assert f.source.startswith("https://") and "/blob/" not in f.source, f.id
        if f.repo_id:
            assert f.source == f"https://huggingface.co/{f.repo_id}/resolve/{f.revision}/{f.path}"


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_weights_come_with_their_config(family):
    """A diffusers folder in the pack folder needs its config.json next to it (unless the config is embedded)."""
    m = load_manifest(family)
    dests = {(f.folder, f.dest) for f in m.files}
    for f in m.files:
        if f.folder == "portrait_animation" and f.path.endswith("diffusion_pytorch_model.safetensors") \
                and "stable-diffusion-v1-5" not in f.dest:
            cfg = f.dest.rsplit("/", 1)[0] + "/config.json"
            assert ("portrait_animation", cfg) in dests, f"{f.id}: no {cfg}"
            cfg_file = next(g for g in m.files if g.dest == cfg)
            assert set(cfg_file.groups) == set(f.groups), f"{f.id}: config groups differ"


def test_standard_models_use_standard_folders():
    hm, memo, hp = (load_manifest(f) for f in FAMILIES)
    assert hm.file("sd15_checkpoint").folder == "checkpoints"
    assert hm.file("clip_vit_h_image_encoder").folder == "clip_vision"
    assert memo.file("vae").folder == "vae"
    assert memo.file("vae").repo_id == "stabilityai/sd-vae-ft-mse"
    assert memo.file("wav2vec2_base_960h").folder == "audio_encoders"
    assert memo.file("wav2vec2_base_960h").repo_id == "facebook/wav2vec2-base-960h"
    assert hp.file("svd_xt_vae").folder == "vae"
    assert hp.file("svd_xt_vae").path == "vae/diffusion_pytorch_model.fp16.safetensors"
    # model-specific files stay in the pack's folder
    for m in (hm, memo, hp):
        for f in m.files:
            if f.repo_id and f.repo_id.startswith(("songkey/hm", "memoavatar/", "tencent/")):
                assert f.folder == "portrait_animation", f.id


def test_hellomeme_version_groups():
    m = load_manifest("hellomeme")
    for group, repos in HELLOMEME_VERSIONS.items():
        files = m.select(groups=[group])
        got = {f.repo_id.split("/", 1)[1] for f in files}
        assert got == repos, group
        # each repository: config.json + weights
        for repo in repos:
            paths = {f.path for f in files if f.repo_id == f"songkey/{repo}"}
            assert paths == {"config.json", "diffusion_pytorch_model.safetensors"}, (group, repo)
    # the face toolkit and the two expression variants
    assert {f.path for f in m.select(groups=["face_toolkit"])} == {
        "hello_face_det.onnx", "hello_face_landmark.onnx", "hello_3dmm.onnx"}
    assert all(f.repo_id == "songkey/hello_group_facemodel" for f in m.select(groups=["face_toolkit"]))
    assert {f.id for f in m.select(groups=["expression_pdfgc"])} == {"pd_fgc_motion", "pd_fgc_motion_config"}
    assert "hello_arkit_blendshape" in {f.id for f in m.select(groups=["expression_arkit"])}
    assert "clip_vit_h_image_encoder" in {f.id for f in m.select(groups=["expression_arkit"])}
    # SD1.5 base, in either layout
    assert [f.id for f in m.select(groups=["base"])] == ["sd15_checkpoint"]
    assert {f.path for f in m.select(groups=["base_diffusers"])} == {
        "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors"}
    assert all(f.repo_id == "songkey/stable-diffusion-v1-5" for f in m.select(groups=["base_diffusers"]))


def test_hellomeme_version_groups_hold_only_what_the_loader_reads():
    """The Model Files node fetches a version group: it must be exactly the files the loader reads for that version
    and mode (every version is driven by PD-FGC), so no ARKit net (hm_control, hm2_control, the ARKit blendshape
    ONNX, CLIP ViT-H) is downloaded for v1 or v2."""
    from portrait_animation.sk_attention.loading import IMAGE_VERSIONS, VIDEO_VERSIONS, version_files

    m = load_manifest("hellomeme")
    arkit = {f.id for f in m.select(groups=["expression_arkit", "v1_arkit", "v2_arkit"])}
    assert {"hm_control", "hm2_control", "hello_arkit_blendshape", "clip_vit_h_image_encoder"} <= arkit
    for version in IMAGE_VERSIONS:
        for video in (False, True) if version in VIDEO_VERSIONS else (False,):
            group = f"{version}_video" if video else version
            ids = {f.id for f in m.select(groups=[group])}
            assert ids == set(version_files(version, video)), group
            assert not ids & arkit, (group, ids & arkit)
    # every file still belongs to some group (the ARKit nets stay listed, in groups of their own)
    assert all(f.groups for f in m.files)
    assert {f.id for f in m.select(groups=["v1_arkit"])} == {"hm_control", "hm_control_config"}
    assert {f.id for f in m.select(groups=["v2_arkit"])} == {"hm2_control", "hm2_control_config"}


def test_memo_groups():
    m = load_manifest("memo")
    core = {f.path for f in m.select(groups=["core"]) if f.repo_id == "memoavatar/memo"}
    assert core == {f"{d}/{n}" for d in ("reference_net", "diffusion_net", "image_proj", "audio_proj")
                    for n in ("config.json", "diffusion_pytorch_model.safetensors")}
    assert "vae" in {f.id for f in m.select(groups=["core"])}
    emotion = {(f.repo_id, f.path) for f in m.select(groups=["emotion"])}
    assert ("memoavatar/memo", "misc/audio_emotion_classifier/diffusion_pytorch_model.safetensors") in emotion
    assert any(r == "emotion2vec/emotion2vec_plus_large" and p == "model.pt" for r, p in emotion)
    assert {f.path for f in m.select(groups=["face"])} == {
        "misc/face_analysis/models/scrfd_10g_bnkps.onnx", "misc/face_analysis/models/glintr100.onnx"}
    assert "misc/vocal_separator/Kim_Vocal_2.onnx" in {f.path for f in m.select(groups=["vocal_separation"])}
    assert [f.id for f in m.select(groups=["audio"])] == ["wav2vec2_base_960h"]


def test_hunyuan_portrait_groups_and_sources():
    m = load_manifest("hunyuan_portrait")
    assert {f.path for f in m.select(groups=["core"]) if f.repo_id == "tencent/HunyuanPortrait"} == {
        "unet.pth", "pose_guider.pth", "dino.pth", "image_proj.pth"}
    assert {f.path for f in m.select(groups=["motion"])} == {"expression.pth", "headpose.pth", "motion_proj.pth"}
    yolo = m.file("yoloface_v5m")
    assert (yolo.repo_id, yolo.path, yolo.groups) == ("LeonJoe13/Sonic", "yoloface_v5m.pt", ("face",))
    arc = m.file("arcface")
    assert (arc.repo_id, arc.path) == ("FoivosPar/Arc2Face", "arcface.onnx")
    assert arc.revision == "da2f1e9aa3954dad093213acfc9ae75a68da6ffd"  # the commit the official README pins


# -------------------------------------------------------- coverage of the parity key manifests (released files)


def test_hellomeme_covers_every_released_checkpoint():
    index = json.loads((parity_dir("hellomeme") / "index.json").read_text())
    m = load_manifest("hellomeme")
    src = by_source(m)
    assert len(index) == 24
    for repo_id, info in index.items():
        detail = json.loads((parity_dir("hellomeme") / info["file"]).read_text())
        assert detail["repo"] == repo_id
        for name in detail["files"]:
            assert (repo_id, name) in src, f"{repo_id}/{name} missing from the hellomeme manifest"
            assert src[(repo_id, name)].dest == f"hellomeme/{repo_id.split('/', 1)[1]}/{name}"


def test_memo_covers_every_released_checkpoint():
    d = parity_dir("memo")
    src = by_source(load_manifest("memo"))
    names = sorted(p.name for p in d.glob("*.json"))
    assert len(names) == 6
    for name in names:
        detail = json.loads((d / name).read_text())
        ckpt = detail["checkpoint"]
        if ckpt.startswith("facebook/wav2vec2-base-960h"):
            assert ("facebook/wav2vec2-base-960h", "model.safetensors") in src
            continue
        assert ("memoavatar/memo", ckpt) in src, ckpt
        folder = ckpt.rsplit("/", 1)[0]
        assert ("memoavatar/memo", f"{folder}/config.json") in src, folder


def test_hunyuan_portrait_covers_every_released_file():
    index = json.loads((parity_dir("hunyuan_portrait") / "index.json").read_text())
    m = load_manifest("hunyuan_portrait")
    src = by_source(m)
    for name in index["files"]:
        detail = json.loads((parity_dir("hunyuan_portrait") / name).read_text())
        rel = detail["file"]
        if rel.startswith("hyportrait/"):
            f = src[("tencent/HunyuanPortrait", rel.split("/", 1)[1])]
            assert f.dest == f"hunyuan_portrait/{rel}"
        else:
            assert ("stabilityai/stable-video-diffusion-img2vid-xt", rel) in src, rel
    for name in index["not_state_dicts"]:
        assert any(f.path == name for f in m.files), name


# ----------------------------------------------------------------------------------------------- (c) sizes


def test_published_sizes_match_and_no_size_is_invented():
    found = {}
    for family in FAMILIES:
        for f in load_manifest(family).files:
            if f.size is not None:
                found[(family, f.id)] = f.size
    assert found == PUBLISHED_SIZES


def test_sizes_agree_with_parity_manifests():
    """Every exact byte size stated in the parity key manifests is the one in the pack manifest."""
    stated = {}
    hm_dir = parity_dir("hellomeme")
    for p in sorted(hm_dir.glob("hm*.json")):
        detail = json.loads(p.read_text())
        match = re.search(r"file size ([\d,]+) bytes", detail.get("released_file_dtype", ""))
        if match:
            repo = detail["repo"].split("/", 1)[1]
            stated[("hellomeme", repo)] = int(match.group(1).replace(",", ""))
    memo_dir = parity_dir("memo")
    for name, file_id in MEMO_CONFIG_IDS.items():
        cfg = json.loads((memo_dir / name).read_text())["config_json"]
        assert cfg["status"].startswith("exact")
        assert len(cfg["text"].encode()) == cfg["text_bytes"]
        stated[("memo", file_id)] = cfg["text_bytes"]
    assert ("hellomeme", "hm5b_reference") in stated
    for (family, file_id), size in stated.items():
        assert load_manifest(family).file(file_id).size == size, (family, file_id)
    assert stated == PUBLISHED_SIZES


# ------------------------------------------------------------------- (d) alternates: files users already have

# The only sha256 digests in the manifests: they gate insightface antelopev2 files standing in for MEMO's face models.
# (size, sha256) from the HF LFS pointers: memoavatar/memo@15b505e blob pages (scrfd_10g_bnkps, genderage) and the
# antelopev2 copies the memo folder duplicates (fudan-generative-ai/hallo(2) face_analysis/models,
# DIAMONIK7777/antelopev2).
ALTERNATE_DIGESTS = {
    "insightface_scrfd_10g_bnkps": (16_923_827, "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91"),
    "insightface_glintr100": (260_665_334, "4ab1d6435d639628a6f3e5008dd4f929edf4c4124b1a7169e1048f9fef534cdf"),
    "insightface_genderage": (1_322_532, "4fde69b1c810857b88c64a335084f1c3fe8f01246c9a191b48c7bb756d6652fb"),
    "insightface_2d106det": (5_030_888, "f001b856447c413801ef5c42091ed0cd516fcd21f2d6b79635b1e733a7109dbf"),
    "insightface_1k3d68": (143_607_619, "df5c06b8a0c12e422b2ed8947b8869faa4105387f199c477af038aa01f9a45cc"),
}


def alternate_places(f) -> set[tuple[str, str]]:
    """(folder key or 'hf:<repo>' / 'modelscope:<repo>', path) of every alternate of a file."""
    return {(a.folder or f"{a.cache}:{a.repo_id}", a.path) for a in f.alternates}


def test_hash_gated_alternates_use_only_published_digests():
    found = {}
    for family in FAMILIES:
        for f in load_manifest(family).files:
            for a in f.alternates:
                if a.sha256 is not None:
                    assert a.accept == "sha256" and a.size is not None, f.id
                    found[f.id] = (a.size, a.sha256)
    assert found == ALTERNATE_DIGESTS
    # a same-named file of another model exists (fal/AuraFace-v1 glintr100.onnx): antelopev2 is never taken on trust
    memo = load_manifest("memo")
    for fid in ALTERNATE_DIGESTS:
        assert [a.accept for a in memo.file(fid).alternates if a.folder == "insightface"] == ["sha256"]


def test_memo_alternates_cover_the_places_users_keep_the_files():
    m = load_manifest("memo")
    for f in m.files:
        if f.repo_id == "memoavatar/memo":  # IF_MemoAvatar: models/checkpoints/memo/<repository path>
            assert ("checkpoints", f"memo/{f.path}") in alternate_places(f), f.id
    vae = {(a.folder, a.path): a for a in m.file("vae").alternates if a.folder}
    assert vae[("vae", "vae-ft-mse-840000-ema-pruned.safetensors")].layout == "ldm"
    assert vae[("vae", "vae-ft-mse-840000-ema-pruned.ckpt")].layout == "ldm"
    assert vae[("vae", "stabilityai/sd-vae-ft-mse/diffusion_pytorch_model.safetensors")].layout is None
    w2v = alternate_places(m.file("wav2vec2_base_960h"))
    assert {("wav2vec", "facebook/wav2vec2-base-960h/model.safetensors"),
            ("wav2vec", "facebook/wav2vec2-base-960h/pytorch_model.bin")} <= w2v
    assert any(folder == "audio_encoders" for folder, _ in w2v)
    for fid in ("emotion2vec_model", "emotion2vec_config", "emotion2vec_tokens"):
        f = m.file(fid)
        assert {("emotion2vec", f"iic/emotion2vec_plus_large/{f.path}"),
                ("modelscope:iic/emotion2vec_plus_large", f.path)} <= alternate_places(f)
    for fid in ("insightface_scrfd_10g_bnkps", "insightface_glintr100"):
        name = m.file(fid).path.rsplit("/", 1)[1]
        assert ("insightface", f"models/antelopev2/{name}") in alternate_places(m.file(fid))


def test_hellomeme_alternates_cover_comfyui_sd15_names():
    m = load_manifest("hellomeme")
    sd = m.file("sd15_checkpoint")
    assert sd.dest == "v1-5-pruned-emaonly.safetensors"
    names = {p for folder, p in alternate_places(sd) if folder == "checkpoints"}
    assert names == {"v1-5-pruned-emaonly-fp16.safetensors", "v1-5-pruned-fp16-emaonly.safetensors",
                     "v1-5-pruned.safetensors"}
    # the songkey repositories need no listed alternate: every repo_id entry is also looked up in both caches
    assert all(f.repo_id for f in m.files)


def test_hello_group_facemodel_facts():
    """real_files.md 3: exact sizes at commit c101210 (hello_face_det is 370,619 B, not 'about 317 KB'). They stay out
    of 'size' because the entries track main and later re-uploads were not checked."""
    m = load_manifest("hellomeme")
    facts = {"hello_face_det": "370,619", "hello_face_landmark": "2,865,751", "hello_3dmm": "311,369,773",
             "hello_arkit_blendshape": "9,108,321"}
    for fid, size in facts.items():
        f = m.file(fid)
        assert f.revision == "main" and f.size is None and f.sha256 is None
        assert size in f.description and "c101210" in f.description, fid
    assert "317 KB" not in json.dumps(raw("hellomeme"))


# ------------------------------------------------------------------------------------- (e) embedded configs


EMBEDDED = ("sd15_unet", "sd15_vae", "sd15_text_encoder", "sd15_scheduler", "svd_xt_unet", "svd_xt_vae",
            "svd_xt_scheduler", "wav2vec2_base_960h", "wav2vec2_base_960h_preprocessor")


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_config_loads(name):
    cfg = embedded_config(name)
    assert isinstance(cfg, dict) and len(cfg) >= 6


def test_manifest_notes_name_existing_embedded_configs():
    for family in FAMILIES:
        for name in load_manifest(family).notes.get("embedded_configs", []):
            assert name in EMBEDDED
            embedded_config(name)


def test_sd15_unet_config():
    c = embedded_config("sd15_unet")
    assert c["_class_name"] == "UNet2DConditionModel"
    assert c["block_out_channels"] == [320, 640, 1280, 1280]
    assert c["cross_attention_dim"] == 768
    assert c["attention_head_dim"] == 8
    assert c["layers_per_block"] == 2
    assert (c["in_channels"], c["out_channels"], c["sample_size"]) == (4, 4, 64)
    assert c["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert c["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert c["flip_sin_to_cos"] is True and c["freq_shift"] == 0
    assert (c["norm_num_groups"], c["norm_eps"]) == (32, 1e-05)


def test_sd15_unet_matches_parity_topology():
    """The reduced UNets of the HelloMeme cases keep the SD1.5 topology; only widths and sizes differ."""
    p = PARITY / "hellomeme" / "pipeline_v5c_image" / "files" / "songkey" / "stable-diffusion-v1-5" / "unet" / "config.json"
    if not p.is_file():
        pytest.skip(f"{p} not found")
    small, full = json.loads(p.read_text()), embedded_config("sd15_unet")
    for key in full:
        if key in ("_diffusers_version", "block_out_channels", "cross_attention_dim", "sample_size"):
            continue
        assert small[key] == full[key], key


def test_sd15_vae_and_text_encoder_configs():
    v = embedded_config("sd15_vae")
    assert v["_class_name"] == "AutoencoderKL"
    assert v["block_out_channels"] == [128, 256, 512, 512]
    assert (v["latent_channels"], v["layers_per_block"], v["norm_num_groups"]) == (4, 2, 32)
    assert v["down_block_types"] == ["DownEncoderBlock2D"] * 4
    assert v["up_block_types"] == ["UpDecoderBlock2D"] * 4
    assert v.get("scaling_factor", 0.18215) == 0.18215  # the SD1.5 file predates the field; diffusers' default
    t = embedded_config("sd15_text_encoder")
    assert t["architectures"] == ["CLIPTextModel"] and t["model_type"] == "clip_text_model"
    assert (t["hidden_size"], t["num_hidden_layers"], t["num_attention_heads"]) == (768, 12, 12)
    assert (t["intermediate_size"], t["max_position_embeddings"], t["vocab_size"]) == (3072, 77, 49408)
    assert t["hidden_act"] == "quick_gelu"
    s = embedded_config("sd15_scheduler")
    assert s["_class_name"] == "PNDMScheduler"
    assert (s["beta_start"], s["beta_end"], s["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")
    assert (s["num_train_timesteps"], s["steps_offset"], s["set_alpha_to_one"]) == (1000, 1, False)


def test_svd_xt_configs():
    u = embedded_config("svd_xt_unet")
    assert u["_class_name"] == "UNetSpatioTemporalConditionModel"
    assert u["num_frames"] == 25
    assert u["in_channels"] == 8 and u["out_channels"] == 4
    assert u["cross_attention_dim"] == 1024
    assert u["num_attention_heads"] == [5, 10, 20, 20]
    assert u["block_out_channels"] == [320, 640, 1280, 1280]
    assert (u["addition_time_embed_dim"], u["projection_class_embeddings_input_dim"]) == (256, 768)
    v = embedded_config("svd_xt_vae")
    assert v["_class_name"] == "AutoencoderKLTemporalDecoder"
    assert v["scaling_factor"] == 0.18215 and v["force_upcast"] is True
    assert v["block_out_channels"] == [128, 256, 512, 512]
    s = embedded_config("svd_xt_scheduler")
    assert s["_class_name"] == "EulerDiscreteScheduler"
    assert s["prediction_type"] == "v_prediction" and s["use_karras_sigmas"] is True
    assert (s["sigma_min"], s["sigma_max"], s["timestep_type"]) == (0.002, 700.0, "continuous")


@pytest.mark.parametrize("name,parity_file", [("svd_xt_unet", "svd_xt_unet_config.json"),
                                              ("svd_xt_vae", "svd_xt_vae_config.json"),
                                              ("svd_xt_scheduler", "svd_xt_scheduler_config.json")])
def test_svd_xt_configs_equal_parity_copies(name, parity_file):
    p = parity_dir("hunyuan_portrait") / "configs" / parity_file
    assert embedded_config(name) == json.loads(p.read_text())


def test_wav2vec2_configs():
    c = embedded_config("wav2vec2_base_960h")
    assert c["model_type"] == "wav2vec2" and c["architectures"] == ["Wav2Vec2ForCTC"]
    assert (c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]) == (768, 12, 12)
    assert c["intermediate_size"] == 3072
    assert c["conv_dim"] == [512] * 7
    assert c["conv_kernel"] == [10, 3, 3, 3, 3, 2, 2] and c["conv_stride"] == [5, 2, 2, 2, 2, 2, 2]
    assert c["conv_bias"] is False and c["feat_extract_norm"] == "group" and c["do_stable_layer_norm"] is False
    assert (c["num_conv_pos_embeddings"], c["num_conv_pos_embedding_groups"]) == (128, 16)
    assert c["vocab_size"] == 32 and c["layer_norm_eps"] == 1e-05
    p = embedded_config("wav2vec2_base_960h_preprocessor")
    assert p["do_normalize"] is True and p["sampling_rate"] == 16000
    assert p["feature_size"] == 1 and p["return_attention_mask"] is False


def test_wav2vec2_configs_agree_with_parity():
    d = parity_dir("memo")
    detail = json.loads((d / "external_wav2vec2_base_960h.json").read_text())
    assert embedded_config("wav2vec2_base_960h_preprocessor") == detail["preprocessor_config"]
    tiny = PARITY / "memo" / "audio_features_speech" / "files" / "wav2vec2-base-960h-tiny" / "config.json"
    if tiny.is_file():
        small, full = json.loads(tiny.read_text()), embedded_config("wav2vec2_base_960h")
        # the reduced case changes sizes only; every flag that selects code paths is the released one
        for key in ("conv_bias", "conv_kernel", "conv_stride", "feat_extract_norm", "feat_extract_activation",
                    "do_stable_layer_norm", "hidden_act", "layer_norm_eps", "num_conv_pos_embeddings",
                    "num_conv_pos_embedding_groups", "num_feat_extract_layers", "vocab_size", "model_type"):
            assert small[key] == full[key], key
