"""MEMO networks vs. the real-size key manifests of the released checkpoints (shared/parity/memo/manifests).

Every network is built on the meta device from the released config (every config variant a manifest records, i.e.
``use_inflated_groupnorm`` x temporal positional encoding for the Diffusion Net) and must have EXACTLY the manifest's
keys and shapes: nothing missing, nothing extra. The loader's strict path and its positional-encoding rule are checked
on meta state dicts built from the manifests (no weights needed).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from portrait_animation.loaders.checkpoint import CheckpointKeyError, load_strict
from portrait_animation.memo import loading

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared")) / "parity" / "memo" / "manifests"


def _manifest(name: str) -> dict:
    path = MANIFESTS / f"{name}.json"
    if not path.is_file():
        pytest.fail(f"manifest {path} not found (set SHARED_DIR)")
    return json.loads(path.read_text())


def _shapes(tensors: dict) -> dict[str, tuple]:
    return {k: tuple(v["shape"]) for k, v in tensors.items()}


def _module_shapes(module: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _assert_same(actual: dict, expected: dict, what: str) -> None:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    shapes = sorted((k, actual[k], expected[k]) for k in actual if k in expected and actual[k] != expected[k])
    assert not (missing or extra or shapes), (
        f"{what}: missing {len(missing)} {missing[:8]}, extra {len(extra)} {extra[:8]}, shape mismatches {shapes[:8]}")


def _meta_state(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def _diffusion_variants():
    m = _manifest("diffusion_net")
    return sorted(m["config_json"]["content_variants"])


def _diffusion_expected(m: dict, cfg) -> dict[str, tuple]:
    expected = _shapes(m["tensors"])
    if cfg.motion.temporal_position_encoding:
        max_len = cfg.motion.temporal_position_encoding_max_len
        for key, spec in m["extra_tensors_when_temporal_position_encoding"].items():
            expected[key] = tuple(max_len if s == "temporal_position_encoding_max_len" else int(s)
                                  for s in spec["shape"])
    return expected


def test_reference_net_matches_manifest():
    from portrait_animation.memo.reference_net import ReferenceNet

    m = _manifest("reference_net")
    cfg = loading.reference_net_config(m["config_json"]["content"])
    with torch.device("meta"):
        net = ReferenceNet(cfg)
    actual = _module_shapes(net)
    _assert_same(actual, _shapes(m["tensors"]), "reference_net")
    assert len(actual) == m["summary"]["num_tensors"]
    assert sum(v.numel() for v in net.state_dict().values()) == m["summary"]["num_elements"]


@pytest.mark.parametrize("variant", _diffusion_variants())
def test_diffusion_net_matches_manifest(variant):
    from portrait_animation.memo.diffusion_net import DiffusionNet

    m = _manifest("diffusion_net")
    config = m["config_json"]["content_variants"][variant]
    cfg = loading.diffusion_net_config(config)
    with torch.device("meta"):
        net = DiffusionNet(cfg)
    expected = _diffusion_expected(m, cfg)
    _assert_same(_module_shapes(net), expected, f"diffusion_net ({variant})")
    key = "with_position_encoding_max_len_24" if cfg.motion.temporal_position_encoding else "without_position_encoding"
    if key in m["summary"] and (not cfg.motion.temporal_position_encoding
                                or cfg.motion.temporal_position_encoding_max_len == 24):
        assert len(expected) == m["summary"][key]["num_tensors"]
    # the released structure: 42 memory attention layers (21 temporal modules) and 16 audio modules
    assert len(list(net.memory_layers())) == 42
    assert sum(1 for k in expected if k.endswith("proj_in.weight") and ".audio_modules." in k) == 16
    assert cfg.use_inflated_groupnorm == ("inflated_groupnorm_true" in variant)


@pytest.mark.parametrize("variant", _diffusion_variants())
def test_diffusion_net_loader_reads_positional_encoding_from_checkpoint(variant):
    """The checkpoint's pos_encoder.pe keys decide PE (and max_len) even under the other config variant."""
    from portrait_animation.memo.diffusion_net import DiffusionNet

    m = _manifest("diffusion_net")
    config = m["config_json"]["content_variants"][variant]
    truth = loading.diffusion_net_config(config)
    state = _meta_state(_diffusion_expected(m, truth))
    flipped = json.loads(json.dumps(config))
    flipped["motion_module_kwargs"]["temporal_position_encoding"] = not truth.motion.temporal_position_encoding
    cfg = loading.diffusion_net_config(flipped, state)
    assert cfg.motion.temporal_position_encoding == truth.motion.temporal_position_encoding
    with torch.device("meta"):
        net = DiffusionNet(cfg)
    load_strict(net, state, source="diffusion_net/diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize("name,factory", [
    ("image_proj", "ImageProj"), ("audio_proj", "AudioProj"), ("audio_emotion_classifier", "EmotionClassifier")])
def test_small_models_match_manifest(name, factory):
    from portrait_animation.memo import emotion_classifier, projections

    m = _manifest(name)
    config = json.loads(m["config_json"]["text"])
    assert set(config) == {"_class_name", "_diffusers_version"}  # class defaults define the architecture
    cls = getattr(projections, factory, None) or getattr(emotion_classifier, factory)
    with torch.device("meta"):
        model = cls()
    _assert_same(_module_shapes(model), _shapes(m["tensors"]), name)
    assert sum(v.numel() for v in model.state_dict().values()) == m["summary"]["num_elements"]


def test_strict_load_names_file_and_keys():
    from portrait_animation.memo.projections import AudioProj

    m = _manifest("audio_proj")
    state = _meta_state(_shapes(m["tensors"]))
    state.pop("proj2.bias")
    state["proj9.weight"] = torch.empty(3, device="meta")
    with torch.device("meta"):
        model = AudioProj()
    with pytest.raises(CheckpointKeyError) as err:
        load_strict(model, state, source="audio_proj/diffusion_pytorch_model.safetensors")
    text = str(err.value)
    assert "audio_proj/diffusion_pytorch_model.safetensors" in text and "proj2.bias" in text and "proj9.weight" in text


def test_loader_error_names_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="reference_net"):
        loading.load_reference_net(tmp_path / "reference_net")
    folder = tmp_path / "diffusion_net"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"use_linear_projection": True}))
    from safetensors.torch import save_file

    save_file({"conv_in.weight": torch.zeros(1)}, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match="diffusion_net.*use_linear_projection"):
        loading.load_diffusion_net(folder)
