"""HunyuanPortrait motion side: the expression encoder, head-pose net, intensity ids, motion refiner and pose guider
against the real-size key manifests, their loading policies (missing keys fail naming them, known extras are dropped
with a log line) and shapes / quirks on tiny inputs (the numerical ground truth is in tests/parity)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from portrait_animation.hunyuan_portrait import pose_guider as hp_pose_guider
from portrait_animation.loaders.checkpoint import CheckpointKeyError
from portrait_animation.motion.hunyuan import intensity, loading
from portrait_animation.motion.hunyuan.expression import ExpressionEncoder, ExpressionEncoderConfig
from portrait_animation.motion.hunyuan.head_pose import HeadPoseConfig, HeadPoseNet, head_pose_input
from portrait_animation.motion.hunyuan.refiner import IntensityAwareMotionRefiner, MotionRefinerConfig
from portrait_animation.motion.hunyuan.tokens import append_pose

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared")) / "parity" / "hunyuan_portrait" / "manifests"

TINY_EXPRESSION = ExpressionEncoderConfig(out_dim=16, blocks=(1, 2, 1, 1), stem_width=8)
TINY_POSE = HeadPoseConfig(blocks=(1, 1, 1, 1), stem_width=8, norm_groups=4)
TINY_REFINER = MotionRefinerConfig(input_dim=12, output_dim=10, num_queries=5, intensity_dim=16, width=16, layers=2,
                                   heads=4)


def _manifest(name: str) -> dict:
    path = MANIFESTS / f"{name}.json"
    if not path.is_file():
        pytest.fail(f"manifest {path} not found (set SHARED_DIR)")
    return json.loads(path.read_text())


@pytest.mark.parametrize("name, factory", [
    ("expression.pth", ExpressionEncoder), ("headpose.pth", HeadPoseNet),
    ("motion_proj.pth", IntensityAwareMotionRefiner), ("pose_guider.pth", hp_pose_guider.PoseGuider)])
def test_modules_match_release_manifests(name, factory):
    manifest = _manifest(name)
    with torch.device("meta"):
        actual = factory().state_dict()
    expected = {t["key"]: tuple(t["shape"]) for t in manifest["tensors"]}
    assert sorted(set(expected) - set(actual)) == [], "keys of the file missing in the module"
    assert sorted(set(actual) - set(expected)) == [], "module keys not in the file"
    assert [k for k in actual if tuple(actual[k].shape) != expected[k]] == []
    assert sum(v.numel() for v in actual.values()) == manifest["num_values"]


def _random_state(module: torch.nn.Module, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.rand(v.shape, generator=g) - 0.5) * 0.4 for k, v in module.state_dict().items()}


# ---- loading policies ------------------------------------------------------------------------------------------------
def test_missing_key_fails_naming_file_and_key(tmp_path):
    sd = _random_state(ExpressionEncoder(TINY_EXPRESSION))
    del sd["resnet50.layer2.1.gn2.weight"]
    path = tmp_path / "expression.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointKeyError) as err:
        loading.load_expression_encoder(path, config=TINY_EXPRESSION)
    assert "resnet50.layer2.1.gn2.weight" in str(err.value) and str(path) in str(err.value)


def test_pose_guider_missing_key_fails(tmp_path):
    sd = _random_state(hp_pose_guider.PoseGuider())
    del sd["blocks.5.bias"]
    torch.save(sd, tmp_path / "pose_guider.pth")
    with pytest.raises(CheckpointKeyError, match=r"blocks\.5\.bias"):
        hp_pose_guider.load_pose_guider(tmp_path / "pose_guider.pth")


def test_known_extras_are_dropped_with_a_log_line(tmp_path, caplog):
    model = HeadPoseNet(TINY_POSE)
    sd = _random_state(model)
    extras = {"head_pose_net.bn1.num_batches_tracked": torch.tensor(3), "optimizer.step": torch.tensor(10.0)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in {**sd, **extras}.items()}}, tmp_path / "headpose.pth")
    with caplog.at_level(logging.INFO):
        loaded = loading.load_head_pose(tmp_path / "headpose.pth", config=TINY_POSE)
    dropped = [k for keys in loaded.load_report.dropped.values() for k in keys]
    assert sorted(dropped) == sorted(extras)
    assert loaded.load_report.unexpected == []
    assert any("dropped 1 keys (BatchNorm step counters" in r.getMessage() for r in caplog.records)
    assert any("dropped 1 keys (optimizer state)" in r.getMessage() for r in caplog.records)
    assert torch.equal(loaded.head_pose_net.fc.weight, sd["head_pose_net.fc.weight"])


def test_refiner_loads_in_file_dtype_unless_asked(tmp_path):
    sd = _random_state(IntensityAwareMotionRefiner(TINY_REFINER))
    torch.save(sd, tmp_path / "motion_proj.pth")
    model = loading.load_motion_refiner(tmp_path / "motion_proj.pth", config=TINY_REFINER)
    assert model.connector.latents.dtype == torch.float32 and not model.training
    half = loading.load_motion_refiner(tmp_path / "motion_proj.pth", dtype=torch.float16, config=TINY_REFINER)
    assert half.connector.latents.dtype == torch.float16


# ---- shapes and quirks -----------------------------------------------------------------------------------------------
def test_expression_encoder_shapes_and_batch_independence():
    model = ExpressionEncoder(TINY_EXPRESSION).eval()
    x = torch.rand(3, 3, 48, 48)
    out = model(x)
    assert out.shape == (3, 16)
    # GroupNorm: one sample's feature does not depend on the rest of the batch
    torch.testing.assert_close(model(x[1:2]), out[1:2], rtol=1e-5, atol=1e-5)
    assert model.resnet50.layer1[0].downsample is not None and model.resnet50.layer2[1].downsample is None


def test_head_pose_ranges_and_embedding():
    model = HeadPoseNet(TINY_POSE).eval()
    crop = torch.rand(2, 3, 64, 64)
    pose = model(head_pose_input(crop))
    assert pose.rotation.shape == (2, 3) and pose.translation.shape == (2, 3)
    assert (pose.rotation.abs() < 180).all() and (pose.translation.abs() < 2).all()
    emb = model.pose_embedding(crop)
    assert emb.shape == (2, 6)
    torch.testing.assert_close(emb[:, :3], pose.rotation)
    assert torch.equal(emb[:, 3:], torch.zeros(2, 3))
    assert torch.equal(head_pose_input(torch.zeros(1)), torch.ones(1))   # [0, 1] -> [1, 3]


def test_refiner_shapes_and_intensity_broadcast():
    model = IntensityAwareMotionRefiner(TINY_REFINER)
    model.load_state_dict(_random_state(model, 1))
    model.eval()
    feats = torch.randn(4, 12)
    out = model(feats, torch.tensor([3], dtype=torch.int32), torch.tensor([40], dtype=torch.int32))
    assert out.shape == (4, 5, 10)
    # one id pair broadcast == the same pair given per frame; other ids change the result
    same = model(feats, torch.full((4,), 3), torch.full((4,), 40))
    torch.testing.assert_close(out, same)
    assert not torch.allclose(out, model(feats, torch.tensor([3]), torch.tensor([41])))
    # frames are independent: (B, T, 1, C) layout gives the same tokens
    batched = model(feats[None, :, None], torch.tensor([3]), torch.tensor([40]))
    assert batched.shape == (1, 4, 5, 10)
    torch.testing.assert_close(batched[0], out)
    with pytest.raises(ValueError, match="intensity ids"):
        model(feats, torch.tensor([1, 2]), torch.tensor([1, 2]))


def test_append_pose_layout():
    refined, pose = torch.randn(2, 5, 10), torch.randn(2, 6)
    tokens = append_pose(refined, pose)
    assert tokens.shape == (2, 5, 16)
    assert torch.equal(tokens[:, :, :10], refined) and torch.equal(tokens[1, 3, 10:], pose[1])


def test_intensity_ids_by_hand():
    base = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 5.0], [0.0, 10.0], [10.0, 10.0]])   # scale = sqrt(200)
    static = np.stack([base] * 4)
    ids, raw = intensity.chunk_intensity_ids(static)
    assert ids.tolist() == [[0, 0]] and raw.tolist() == [[0.0, 0.0]]
    moved = np.stack([base, base + [2.0, 0.0]])          # rigid shift: head moves, expression does not
    head, exp = intensity.intensity_values(moved)
    assert exp == pytest.approx(0.0) and head == pytest.approx(1.0 / np.sqrt(200) * 256)
    big = np.stack([base, base + [200.0, 0.0]])
    assert intensity.chunk_intensity_ids(big)[0].tolist() == [[127, 0]]   # clamped
    seq = np.concatenate([moved] * 30)                     # 60 frames -> chunks of 25, 25, 10
    ids, raw = intensity.chunk_intensity_ids(seq)
    assert ids.shape == (3, 2) and ids.dtype == np.int64 and raw.dtype == np.float64
    assert ids[0, 0] == int(raw[0, 0])


def test_pose_guider_black_map_is_frame_constant():
    guider = hp_pose_guider.PoseGuider(hp_pose_guider.PoseGuiderConfig(out_channels=8, block_channels=(4, 6, 8, 8)))
    guider.load_state_dict(_random_state(guider, 2))
    out = guider(torch.zeros(1, 3, 3, 32, 40))
    assert out.shape == (1, 8, 3, 4, 5)
    const = hp_pose_guider.pose_feature_map(guider, 32, 40)
    assert const.shape == (8, 4, 5)
    for f in range(3):
        torch.testing.assert_close(out[0, :, f], const)
    assert const.abs().sum() > 0
