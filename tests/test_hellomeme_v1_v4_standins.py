"""The v1-v4 stand-in models of the integration tests (``write_hellomeme_v1_v4_models``): every file the v1-v4
version groups list is where the manifest puts it, in the released folder layout, and the pack's loader builds every
version from them (image and video) at the stand-in UNet's widths. Also: a v3/v4 motion adapter takes its time
embedding width from the checkpoint (SD1.5's 1280 for the released files), which is what lets the reduced stand-ins
fit their UNet."""
from __future__ import annotations

import json

import pytest
import torch

V1_V4_GROUPS = ("v1", "v1_video", "v2", "v2_video", "v3", "v3_video", "v4", "v4_video")


@pytest.fixture(scope="module")
def stand_ins(hellomeme_stand_ins):
    """The v5 stand-ins (tests/conftest.py) and, in the same models folder, the v1-v4 ones."""
    from helpers.tiny_models import write_hellomeme_v1_v4_models

    models_dir, info = hellomeme_stand_ins
    return models_dir, info, write_hellomeme_v1_v4_models(models_dir)


def test_motion_adapter_time_embedding_width_comes_from_the_weights():
    from portrait_animation.sk_attention.adapters import build_hellomeme_module

    config = {"_class_name": "HM3MotionAdapter", "block_down_channels": [32, 32, 64, 64],
              "block_up_channels": [64, 64, 64, 32], "num_attention_heads": 8, "use_3d": True}
    with torch.device("meta"):
        released = build_hellomeme_module(config)  # no shapes: SD1.5's time embedding
        reduced = build_hellomeme_module(config, shapes={"motion_down.0.time_emb_proj.weight": (32, 128)})
    assert released.motion_down[0].time_emb_proj.in_features == 1280
    assert all(m.time_emb_proj.in_features == 128 for m in [*reduced.motion_down, *reduced.motion_up])
    assert reduced.config.time_embed_dim == 128


def test_v1_v4_stand_ins_are_the_manifest_files_in_released_layouts(stand_ins):
    from portrait_animation.loaders.manifest import load_manifest
    from portrait_animation.loaders.store import ModelStore

    models_dir, info, written = stand_ins
    manifest = load_manifest("hellomeme")
    files = manifest.select(groups=list(V1_V4_GROUPS) + ["v1_arkit", "v2_arkit"])
    found = ModelStore.at(models_dir).ensure(files)  # present where the manifest says, and the store's checks pass
    assert {p.parent.name for p in found.values()} == set(written)
    for repo, folder in written.items():
        config = json.loads((folder / "config.json").read_text())
        assert config["_name_or_path"] == f"songkey/{repo}" and config["_class_name"]
    # v2 / v3 control nets and the v4 projector: class-name-only configs, as released
    for repo in ("hm2_control", "hm2_control2", "hm3_control_mix", "hm4_control_proj"):
        config = json.loads((written[repo] / "config.json").read_text())
        assert set(config) == {"_class_name", "_diffusers_version", "_name_or_path"}, repo
    # the v4 control base: the two released fields
    assert set(json.loads((written["hm_control_base"] / "config.json").read_text())) == {
        "_class_name", "_diffusers_version", "_name_or_path", "in_channels", "cross_attention_dim"}
    # AnimateDiff adapters in fp16, as released
    from safetensors import safe_open

    with safe_open(str(written["hm3_animatediff"] / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert not (info["hellomeme"] / "hm5b_reference").exists()


@pytest.mark.parametrize("version,video", [("v1", False), ("v2", False), ("v3", False), ("v4", False),
                                           ("v1", True), ("v3", True), ("v4", True)])
def test_loader_builds_each_version_from_the_stand_ins(stand_ins, version, video):
    from portrait_animation.loaders.store import ModelStore
    from portrait_animation.sk_attention.loading import load_hellomeme

    models_dir, info, _ = stand_ins
    models = load_hellomeme(version, video=video, store=ModelStore.at(models_dir), dtype=torch.float32)
    assert models.version == version
    c = info["unet_channels"]
    size = info["image_size"]
    pose = torch.zeros(1, 3, 2, size, size)
    with torch.no_grad():
        if models.control_projector is not None:  # v4: encoder + projector
            feats = models.control_projector(models.control_encoder(pose, emo_embedding=torch.zeros(1, 2, 548)))
        else:  # v1-v3: one control net
            feats = models.control_encoder(pose, emo_embedding=torch.zeros(1, 2, 548))
    assert feats, version
    widths = set(c) | {c[-1]}
    assert all(v.shape[1] in widths for v in feats.values()), {k: tuple(v.shape) for k, v in feats.items()}
    if video:
        assert models.pre_denoiser is not None  # v1-v4 video: the per-frame / end-frame pre-pass UNet
        assert models.denoiser.motion is not None or version in ("v1", "v2")
