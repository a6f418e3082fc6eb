"""The HelloMeme v5/v5b/v5c modules match the released checkpoints key for key.

The parity manifests (``parity/hellomeme/manifests/<repo>.json``) list every state-dict key and shape of the
released files as the official classes build them at full size, with the ``config.json`` the official code reads.
Each module is built on the meta device from that config (nothing allocated) and its state dict must equal the
manifest exactly: every key, every shape, nothing extra. Persistent position tables flagged as buffers must be
buffers here too.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from portrait_animation.sk_attention.adapters import build_hellomeme_module, load_hellomeme_module

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))
MANIFESTS = SHARED / "parity" / "hellomeme" / "manifests"

REPOS = ("hm5_reference", "hm5b_reference", "hm5c_reference", "hm5_motion", "hm5_control_base", "hm5_control_proj",
         "hm5c_control_proj")
# v1-v4 reference and motion adapters, and the AnimateDiff motion adapters of v1-v4 video (diffusers MotionAdapter)
REPOS += ("hm_reference", "hm2_reference", "hm3_reference", "hm4_reference", "hm3_motion", "hm4_motion",
          "hm_animatediff_frame12", "hm2_animatediff_frame12", "hm3_animatediff", "hm4_animatediff")
# v1-v4 control networks and the v4 projector
REPOS += ("hm_control", "hm_control2", "hm2_control", "hm2_control2", "hm3_control_mix", "hm_control_base",
          "hm4_control_proj")


def manifest(repo: str) -> dict:
    path = MANIFESTS / f"{repo}.json"
    if not path.is_file():
        pytest.skip(f"parity manifest {path} not found (set SHARED_DIR)")
    return json.loads(path.read_text())


@pytest.mark.parametrize("repo", REPOS)
def test_module_matches_released_manifest(repo):
    m = manifest(repo)
    assert m["config_json"]["_class_name"] == m["class"]
    with torch.device("meta"):
        module = build_hellomeme_module(m["config_json"], source=repo)
    own = {k: list(v.shape) for k, v in module.state_dict().items()}
    expected = {k: v["shape"] for k, v in m["tensors"].items()}
    missing = sorted(set(expected) - set(own))
    extra = sorted(set(own) - set(expected))
    wrong = sorted(k for k in expected if k in own and own[k] != expected[k])
    assert not missing and not extra and not wrong, (
        f"{repo}: missing {missing[:10]} ({len(missing)}), extra {extra[:10]} ({len(extra)}), "
        f"shape mismatches {[(k, own[k], expected[k]) for k in wrong[:10]]} ({len(wrong)})")
    assert len(own) == m["num_tensors"]
    assert sum(torch.Size(s).numel() for s in own.values()) == m["num_values"]
    buffers = {k for k, _ in module.named_buffers()}
    flagged = {k for k, v in m["tensors"].items() if v.get("buffer")}
    assert flagged <= buffers, f"{repo}: stored tables that are not buffers here: {sorted(flagged - buffers)[:5]}"


def test_unsupported_release_names_the_folder(tmp_path):
    folder = tmp_path / "hm4_reference"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "HM9ReferenceAdapter"}))
    with pytest.raises(ValueError, match="hm4_reference.*HM9ReferenceAdapter.*not a HelloMeme module"):
        load_hellomeme_module(folder)
    (folder / "config.json").write_text(json.dumps({"_class_name": "SomethingElse"}))
    with pytest.raises(ValueError, match="hm4_reference.*SomethingElse"):
        load_hellomeme_module(folder)


def test_strict_load_reports_missing_keys(tmp_path):
    from safetensors.torch import save_file

    from portrait_animation.loaders.checkpoint import CheckpointKeyError

    config = {"_class_name": "HM5ReferenceAdapter", "block_down_channels": [8, 8, 8, 8],
              "block_up_channels": [16, 16, 16, 8], "num_attention_heads": 8, "use_3d": False}
    module = build_hellomeme_module(config)
    sd = {k: v.contiguous() for k, v in module.state_dict().items() if "time_emb_proj" not in k}
    folder = tmp_path / "hm5_reference"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointKeyError, match="time_emb_proj"):
        load_hellomeme_module(folder)


def test_v5_reference_column_positions_option(tmp_path):
    """Faithful v5 reference blocks need square maps; the option lifts that and agrees on square maps."""
    from safetensors.torch import save_file

    config = {"_class_name": "HM5ReferenceAdapter", "block_down_channels": [8, 8, 8, 8],
              "block_up_channels": [16, 16, 16, 8], "num_attention_heads": 8, "use_3d": False}
    torch.manual_seed(0)
    folder = tmp_path / "hm5_reference"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in build_hellomeme_module(config).state_dict().items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    faithful = load_hellomeme_module(folder)
    lifted = load_hellomeme_module(folder, column_pe_from_row_length=False)
    hidden, ref = torch.randn(4, 16, 6, 6), torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(faithful.reference_modules_up[0](hidden, ref, 2),
                                   lifted.reference_modules_up[0](hidden, ref, 2))
        hidden, ref = torch.randn(4, 16, 4, 6), torch.randn(2, 16, 4, 6)
        with pytest.raises(ValueError, match="square"):
            faithful.reference_modules_up[0](hidden, ref, 2)
        assert lifted.reference_modules_up[0](hidden, ref, 2).shape == hidden.shape
    with pytest.raises(TypeError, match="unknown HelloMeme module option"):
        load_hellomeme_module(folder, bogus=True)
