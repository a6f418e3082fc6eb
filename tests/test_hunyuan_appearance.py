"""HunyuanPortrait appearance path: DINOv2 + IMAdapter and the image projector vs. the real-size key manifests,
the loading policies, the exact skip of the IMAdapter conv branches, ArcFace input/output handling and the
pre-/post-processing geometry helpers (the numerical ground truth is in tests/parity)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from portrait_animation.hunyuan_portrait import appearance_loading, identity, paste_back, preprocess
from portrait_animation.hunyuan_portrait.dino import DinoConfig, DinoV2IdEncoder
from portrait_animation.hunyuan_portrait.image_proj import ImageProjector
from portrait_animation.loaders.checkpoint import CheckpointKeyError

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared")) / "parity" / "hunyuan_portrait" / "manifests"

TINY = DinoConfig(embed_dim=64, depth=4, num_heads=4, img_size=70, adapter_blocks=(1, 3), adapter_dim=32,
                  adapter_attn_dim=16, adapter_heads=2, id_dim=24)


def _manifest(name: str) -> dict:
    path = MANIFESTS / f"{name}.json"
    if not path.is_file():
        pytest.fail(f"manifest {path} not found (set SHARED_DIR)")
    return json.loads(path.read_text())


def _assert_matches(module: torch.nn.Module, manifest: dict, what: str) -> None:
    expected = {t["key"]: (tuple(t["shape"]), t["dtype"]) for t in manifest["tensors"]}
    actual = module.state_dict()
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    shapes = sorted((k, tuple(actual[k].shape), expected[k][0]) for k in actual
                    if k in expected and tuple(actual[k].shape) != expected[k][0])
    assert not (missing or extra or shapes), (
        f"{what}: missing {len(missing)} {missing[:8]}, extra {len(extra)} {extra[:8]}, shapes {shapes[:8]}")
    assert len(actual) == manifest["num_tensors"]
    assert sum(v.numel() for v in actual.values()) == manifest["num_values"]
    # in the file's float dtype, every tensor has the manifest's dtype (int64 BatchNorm counters stay int64)
    cast = module.to(getattr(torch, manifest["float_dtype"])).state_dict()
    wrong = sorted((k, str(cast[k].dtype), d) for k, (_, d) in expected.items() if str(cast[k].dtype) != f"torch.{d}")
    assert not wrong, f"{what}: dtypes {wrong[:8]}"


def _random_state(module: torch.nn.Module, seed: int = 0, dtype=None) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in module.state_dict().items():
        if not v.is_floating_point():
            out[k] = torch.tensor(7, dtype=v.dtype)
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            out[k] = (torch.rand(v.shape, generator=g) - 0.5) * 0.4
        if dtype is not None and out[k].is_floating_point():
            out[k] = out[k].to(dtype)
    return out


# ---- manifests -------------------------------------------------------------------------------------------------------
def test_dino_matches_manifest():
    m = _manifest("dino.pth")
    with torch.device("meta"):
        model = DinoV2IdEncoder()
    _assert_matches(model, m, "dino.pth")
    assert m["float_dtype"] == "float16"
    assert model.num_tokens == 261


def test_image_proj_matches_manifest():
    m = _manifest("image_proj.pth")
    with torch.device("meta"):
        proj = ImageProjector()
    # the file holds the inner Linear's bare keys
    _assert_matches(proj.linear, m, "image_proj.pth")


# ---- loading ---------------------------------------------------------------------------------------------------------
def test_dino_policy_keeps_file_dtype_and_counters(tmp_path):
    sd = _random_state(DinoV2IdEncoder(TINY), dtype=torch.float16)
    torch.save(sd, tmp_path / "dino.pth")
    model = appearance_loading.load_dino(tmp_path / "dino.pth", config=TINY)
    assert model.pos_embed.dtype == torch.float16
    assert model.blocks[1].adapter.branch1.bn.num_batches_tracked.dtype == torch.int64
    assert int(model.blocks[1].adapter.branch1.bn.num_batches_tracked) == 7
    assert model.load_report.file_dtype == "float16"
    f32 = appearance_loading.load_dino(tmp_path / "dino.pth", dtype=torch.float32, config=TINY)
    assert f32.pos_embed.dtype == torch.float32
    assert torch.equal(f32.pos_embed, sd["pos_embed"].float())
    assert f32.blocks[1].adapter.branch1.bn.num_batches_tracked.dtype == torch.int64


def test_dino_policy_counters_optional_weights_required(tmp_path):
    sd = _random_state(DinoV2IdEncoder(TINY))
    counters = [k for k in sd if k.endswith("num_batches_tracked")]
    assert len(counters) == 2 * 5
    torch.save({k: v for k, v in sd.items() if k not in counters}, tmp_path / "no_counters.pth")
    model = appearance_loading.load_dino(tmp_path / "no_counters.pth", config=TINY)
    assert sorted(model.load_report.filled) == sorted(counters)
    torch.save({k: v for k, v in sd.items() if k != "blocks.1.adapter.D_fc1.weight"}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointKeyError, match="D_fc1"):
        appearance_loading.load_dino(tmp_path / "broken.pth", config=TINY)


def test_image_proj_loads_bare_keys(tmp_path):
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(64, 261, generator=g), torch.randn(64, generator=g)
    torch.save({"weight": weight, "bias": bias}, tmp_path / "image_proj.pth")
    proj = appearance_loading.load_image_proj(tmp_path / "image_proj.pth")
    assert torch.equal(proj.linear.weight, weight) and torch.equal(proj.linear.bias, bias)
    tokens = torch.randn(2, 261, 32, generator=g)
    expected = torch.einsum("ot,btc->boc", weight, tokens) + bias[None, :, None]
    torch.testing.assert_close(proj(tokens), expected, rtol=1e-5, atol=1e-5)


# ---- forward ---------------------------------------------------------------------------------------------------------
def _tiny_model(seed: int = 0) -> DinoV2IdEncoder:
    model = DinoV2IdEncoder(TINY)
    model.load_state_dict(_random_state(model, seed))
    return model.eval()


def test_adapter_branch_skip_is_exact():
    model = _tiny_model()
    g = torch.Generator().manual_seed(2)
    image = torch.randn(2, 3, 56, 56, generator=g)         # 4x4 patches from a 5x5 positional grid
    arcface = torch.randn(2, TINY.id_dim, generator=g)
    with torch.no_grad():
        skipped = model(image, arcface)
        computed = model(image, arcface, compute_branches=True)
        # and per adapter, on one block input
        block = model.blocks[1]
        x = torch.randn(2, 1 + 4 + 16, TINY.embed_dim, generator=g)
        a_skip = block.adapter(x, arcface[:, None])
        a_full = block.adapter(x, arcface[:, None], compute_branches=True)
    assert skipped.shape == (2, 1 + 4 + 16, TINY.embed_dim)
    torch.testing.assert_close(skipped, computed, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a_skip, a_full, rtol=1e-5, atol=1e-5)
    # cls/register tokens get 2 * relu(D_fc1(x)) before D_fc2
    x0 = torch.relu(block.adapter.D_fc1(x[:, :5]))
    torch.testing.assert_close(a_skip[:, :5], block.adapter.D_fc2(2 * x0), rtol=1e-5, atol=1e-6)


def test_adapter_branches_are_not_run_when_skipped():
    model = _tiny_model()
    calls = []
    for i in TINY.adapter_blocks:
        for branch in ("branch1", "branch2", "branch3"):
            getattr(model.blocks[i].adapter, branch).register_forward_hook(lambda *a: calls.append(1))
    image, arcface = torch.randn(1, 3, 56, 56), torch.randn(1, TINY.id_dim)
    with torch.no_grad():
        model(image, arcface)
        assert calls == []
        model(image, arcface, compute_branches=True)
    assert len(calls) == 3 * len(TINY.adapter_blocks)


def test_adapter_changes_output_and_zero_id_still_contributes():
    model = _tiny_model()
    image = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        a = model(image, torch.randn(1, TINY.id_dim))
        zero = model(image, torch.zeros(1, TINY.id_dim))
        for i in TINY.adapter_blocks:
            model.blocks[i].adapter_scale = 0.0
        plain = model(image, torch.zeros(1, TINY.id_dim))
    assert not torch.allclose(a, zero)
    assert not torch.allclose(zero, plain)      # id_proj's bias path is still added with a zero embedding


def test_pos_embed_interpolation_uses_scale_factor():
    model = _tiny_model()
    table = model.interpolate_pos_embed(56, 56)
    assert table.shape == (1, 1 + 16, TINY.embed_dim)
    assert torch.equal(table[:, 0], model.pos_embed[:, 0])
    grid = model.pos_embed[:, 1:].reshape(1, 5, 5, -1).permute(0, 3, 1, 2)
    by_size = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 16, -1)
    assert not torch.allclose(table[:, 1:], by_size)   # (4 + 0.1) / 5 scale factor, not size=4
    assert model.interpolate_pos_embed(70, 70) is model.pos_embed


# ---- ArcFace ---------------------------------------------------------------------------------------------------------
class _FakeSession:
    def __init__(self, output):
        self.output, self.feeds = output, []

    def get_inputs(self):
        return [type("I", (), {"name": "data"})()]

    def run(self, names, feeds):
        self.feeds.append(feeds)
        return [self.output]


def test_arcface_zero_vector_without_face():
    session = _FakeSession(np.ones((1, 512), np.float32))
    enc = identity.ArcFaceEncoder(session=session)
    emb = enc.embed(None)
    assert emb.shape == (1, identity.EMBEDDING_DIM) and not emb.any()
    assert session.feeds == []                      # the network is not run
    assert not identity.zero_embedding().any()


def test_arcface_input_rgb_unit_range_and_l2_norm():
    raw = np.arange(1, 513, dtype=np.float32).reshape(1, 512)
    session = _FakeSession(raw)
    enc = identity.ArcFaceEncoder(session=session)
    face = np.random.default_rng(0).random((112, 112, 3))
    emb = enc.embed(face)
    fed = session.feeds[0]["data"]
    assert fed.shape == (1, 3, 112, 112) and fed.dtype == np.float32
    np.testing.assert_array_equal(fed[0, 0], face[..., 0].astype(np.float32))     # RGB order, no mean/std
    np.testing.assert_allclose(emb, raw / np.linalg.norm(raw), rtol=1e-6)
    assert abs(np.linalg.norm(emb) - 1) < 1e-6


# ---- geometry --------------------------------------------------------------------------------------------------------
def test_square_crop_box():
    # face 20x40 at (100, 50): the 3x box 80..140 x 10..130 fits the image; it is taller than wide, so the side is 60
    # around the box centre (the face centre is the box centre: no shift)
    assert preprocess.square_crop_box([100, 50, 120, 90], 1.0, 300, 400) == [80, 40, 140, 100]
    # clipped at the top: 80..140 x 0..90, centre y 45 moves toward the face centre (30) by at most (90 - 60) / 2
    assert preprocess.square_crop_box([100, 10, 120, 50], 1.0, 300, 400) == [80, 0, 140, 60]
    # wider than tall (clipped left): 0..45 x 0..30 would be 45 wide; centre x moves toward the face by <= 7.5
    assert preprocess.square_crop_box([5, 10, 20, 20], 1.0, 300, 400) == [0, 0, 30, 30]
    # corners are rounded half to even (Python round): 44.5 -> 44, 54.5 -> 54
    assert preprocess.square_crop_box([44.5, 45, 54.5, 55], 0.0, 300, 400) == [44, 45, 54, 55]


def test_motion_crop_box_and_padding():
    lmk = np.array([[10.0, 10.0], [30.0, 10.0], [20.0, 20.0], [12.0, 30.0], [28.0, 30.0]])
    box = preprocess.motion_crop_box(lmk, [0.0, 0.0, 40.0, 40.0], 0.5)
    np.testing.assert_allclose(box, [5.0, 5.0, 35.0, 35.0])
    frame = np.full((20, 20, 3), 200, np.uint8)
    crop = preprocess.square_centre_crop(frame, [-10.0, -10.0, 10.0, 10.0])
    assert crop.shape == (20, 20, 3)
    assert not crop[:10].any() and not crop[:, :10].any() and (crop[10:, 10:] == 200).all()


def test_align_face_maps_landmarks_to_template():
    tmpl = preprocess.arcface_template().astype(np.float64)
    landmarks = tmpl * 2.0 + np.array([30.0, 40.0])       # the face at twice the scale, shifted
    image = np.random.default_rng(1).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    aligned, inverse = preprocess.align_face(image, landmarks)
    np.testing.assert_allclose(inverse[:2], [[2, 0, 30], [0, 2, 40]], atol=1e-4)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.float64
    # integer source coordinates sample pixels exactly
    np.testing.assert_allclose(aligned[5, 7], image[40 + 10, 30 + 14] / 255.0, atol=1e-4)
    # outside the image: black
    far, _ = preprocess.align_face(image, tmpl * 2.0 - 200.0)
    assert not far[:20, :20].any()


def test_soft_mask_and_paste_back():
    mask = paste_back.soft_mask(100, 50)
    assert mask.shape == (50, 100, 1) and mask.dtype == np.float32
    assert not mask[0].any() and not mask[:, 0].any() and not mask[-1].any() and not mask[:, -1].any()
    assert mask[25, 50, 0] == 1.0
    original = np.full((80, 120, 3), 10, np.uint8)
    frames = torch.full((2, 64, 64, 3), 0.5)
    out = paste_back.paste_back(original, frames, (10, 20, 110, 70))
    assert out.shape == (2, 80, 120, 3)
    assert (out[:, :20] == 10).all() and (out[:, :, :10] == 10).all()
    assert (out[:, 45, 60] == 127).all()                   # int(0.5 * 255) = 127, fully inside the mask
    with pytest.raises(ValueError):
        paste_back.paste_back(original, frames, (-1, 0, 50, 50))
