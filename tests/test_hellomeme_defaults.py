"""HelloMeme defaults as released, and inputs checked before any work.

* framing: the Driving Conditions crop (3x the face, moved up) comes back as a ``CropInfo`` that Face Paste Back
  undoes exactly, on real portraits of any size and aspect ratio;
* timing: driving frames resampled to 8 fps by nearest frame in time (the original re-encodes to 8 fps);
* prompt: the built-in prompt per version, and the example workflows' CLIP Text Encode text;
* LoRA: UNet at 1.0, ``lora_scale`` for the text encoder, everything not applied is reported;
* CONDITIONING: combined entries (weighted by strength) and concatenated ones are honoured, the rest refused;
* sizes: only multiples of 64 are accepted, with a message naming the input;
* the example workflows (API and UI) are wired for all of this.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from portrait_animation.motion.hellomeme import conditions as cond
from portrait_animation.motion.hellomeme import geometry as geo
from portrait_animation.sk_attention.base_models import merge_lora
from portrait_animation.sk_attention.conditioning import check_size, prompt_entries
from portrait_animation.sk_attention.pipeline_image import (BUILTIN_PROMPT, BUILTIN_PROMPT_NEW, PromptEntries,
                                                            builtin_prompt, generate_image, text_rows)
from portrait_animation.sk_attention.pipeline_video import VideoGeneration

from test_hellomeme_conditions import _fake_toolkit, _frames_with_faces, _rgb, _tiny_expression_encoder
from test_hellomeme_pipeline import (TEXT, computed_controls, reference_image, runtime, text, tiny_models,
                                     tiny_unet)

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ("HelloMeme image", "HelloMeme video", "HelloMeme style transfer")


# ---- driving frame rate ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, src, dst", [(25, 25, 8), (100, 25, 8), (14, 15, 8), (121, 30, 8), (37, 29.97, 8),
                                         (10, 5, 8), (7, 24, 12)])
def test_resampling_picks_the_frame_nearest_in_time(n, src, dst):
    picked = cond.resample_indices(n, src, dst)
    assert len(picked) == max(1, int(np.floor(n * dst / src + 0.5)))  # the clip keeps its duration
    assert abs(len(picked) / dst - n / src) <= 0.5 / dst + 1e-9
    times = np.arange(n) / src
    for k, i in enumerate(picked):
        best = np.abs(times - k / dst).min()
        assert abs(times[i] - k / dst) <= best + 1e-9, (k, i)
    assert picked == sorted(picked) and picked[0] == 0 and picked[-1] <= n - 1


def test_resampling_examples_and_edge_cases():
    assert cond.resample_indices(25, 25, 8) == [0, 3, 6, 9, 13, 16, 19, 22]
    assert cond.resample_indices(14, 15, 8) == [0, 2, 4, 6, 8, 9, 11]  # the video workflow's fast run (jue.mp4)
    assert cond.resample_indices(4, 4, 8) == [0, 1, 1, 2, 2, 3, 3, 3]  # above the source rate: repeats
    assert cond.resample_indices(30, 30, 0) == list(range(30))  # 0 keeps every frame
    assert cond.resample_indices(1, 0, 8) == [0]  # one image: nothing to resample
    with pytest.raises(ValueError, match=r"input 'fps'.*'driving_fps'"):
        cond.resample_indices(10, 0, 8)


def test_conditions_drive_at_8_fps_with_the_picked_frames():
    frames = _rgb(_frames_with_faces(10))  # the face moves 4 px per frame
    ref = _rgb(_frames_with_faces(1))[0]
    enc = _tiny_expression_encoder()
    c = cond.hellomeme_conditions(ref, frames, toolkit=_fake_toolkit(), pdfgc_encoder=enc, fps=20.0, driving_fps=8.0)
    picked = cond.resample_indices(10, 20.0, 8.0)
    assert picked == [0, 3, 5, 8] and list(c.source_frames) == picked
    assert c.num_frames == 4 and c.fps == 8.0 and c.source_fps == 20.0 and c.pd_fpg.shape == (1, 4, 548)
    assert "8 fps" in c.report() and "10 input frames at 20 fps" in c.report()
    # the same as driving with exactly those frames
    direct = cond.hellomeme_conditions(ref, frames[picked], toolkit=_fake_toolkit(), pdfgc_encoder=enc)
    torch.testing.assert_close(c.driving_images, direct.driving_images)
    torch.testing.assert_close(c.condition, direct.condition)
    torch.testing.assert_close(c.pd_fpg, direct.pd_fpg)
    # 0 keeps the source rate; an unknown source rate cannot be resampled (raised before any face model runs)
    keep = cond.hellomeme_conditions(ref, frames, toolkit=_fake_toolkit(), pdfgc_encoder=enc, fps=20.0)
    assert keep.num_frames == 10 and keep.fps == 20.0
    with pytest.raises(ValueError, match="fps"):
        cond.hellomeme_conditions(ref, frames, toolkit=None, head_pose="3dmm", fps=0.0, driving_fps=8.0,
                                  store=object())


# ---- framing: crop info for paste-back -------------------------------------------------------------------------------
def _paste_round_trip(c, reference_rgb):
    """Paste the 512 reference crop itself back: (info, result, reference) as float IMAGE tensors."""
    from portrait_animation.face.paste import paste_back

    info = c.reference_crop_info()
    ref = torch.from_numpy(np.ascontiguousarray(reference_rgb)).float()[None] / 255
    out, _ = paste_back(c.reference_image, info, ref, feather=0.0)
    return info, out[0], ref[0]


def test_crop_info_is_the_original_framing_and_pastes_back_exactly_on_synthetic_faces():
    frames = _frames_with_faces(1, size=(360, 480))  # non-square, the face off-centre
    ref = _rgb(frames)[0]
    c = cond.hellomeme_conditions(ref, ref[None], toolkit=_fake_toolkit(), pdfgc_encoder=_tiny_expression_encoder())
    info, out, src = _paste_round_trip(c, ref)
    # the original's box: clip_crop_box of the reference landmarks (3x the mean face box, moved up, inside)
    lm, _ = _fake_toolkit().landmarks_222([np.ascontiguousarray(ref[..., ::-1])], input_name="reference")
    tl, br = geo.clip_crop_box(lm, 360, 480)
    assert (info.height, info.width, info.size) == (360, 480, 512) and len(info) == 1
    assert info.box(0) == (int(tl[0]), int(tl[1]), int(br[0] - tl[0])) and br[0] - tl[0] == br[1] - tl[1]
    assert not info.outside.any()
    x0, y0, s = info.box(0)
    inside = (out - src)[y0:y0 + s, x0:x0 + s].abs()
    assert float(inside.mean()) < 0.01
    outside = torch.ones(360, 480, dtype=torch.bool)
    outside[y0:y0 + s, x0:x0 + s] = False
    assert torch.equal(out[outside], src[outside])  # untouched outside the box, bit for bit


@pytest.mark.slow
@pytest.mark.parametrize("name", ["harris.jpg", "dicaprio.jpg"])
@pytest.mark.parametrize("shape", ["as_is", "narrow", "wide"])
def test_crop_info_round_trip_on_real_portraits(data_dir, name, shape):
    rgb = cv2.cvtColor(cv2.imread(str(data_dir / name)), cv2.COLOR_BGR2RGB)
    if shape == "narrow":
        rgb = np.ascontiguousarray(rgb[:, : int(rgb.shape[1] * 0.8)])
    elif shape == "wide":  # the face off-centre in a wide frame
        rgb = np.ascontiguousarray(np.pad(rgb, ((0, 0), (rgb.shape[1] // 3, 0), (0, 0)), mode="edge"))
    c = cond.hellomeme_conditions(rgb, rgb[None], head_pose="approximate", pdfgc_encoder=_tiny_expression_encoder())
    info, out, src = _paste_round_trip(c, rgb)
    h, w = rgb.shape[:2]
    x0, y0, s = info.box(0)
    assert (info.height, info.width) == (h, w) and 0 < s <= min(h, w) - 1
    assert 0 <= x0 and x0 + s <= w and 0 <= y0 and y0 + s <= h  # kept inside the image, as the original
    assert c.reference_box == (x0, y0, x0 + s, y0 + s)
    err = (out - src)[y0:y0 + s, x0:x0 + s].abs()
    assert float(err.mean()) < 0.015, float(err.mean())  # only the 512 resize's detail loss
    mask = torch.ones(h, w, dtype=torch.bool)
    mask[y0:y0 + s, x0:x0 + s] = False
    assert torch.equal(out[mask], src[mask])


def test_crop_info_without_crop_reference():
    enc = _tiny_expression_encoder()
    square = _rgb(_frames_with_faces(1, size=(400, 400)))[0]
    c = cond.hellomeme_conditions(square, square[None], toolkit=_fake_toolkit(), pdfgc_encoder=enc,
                                  crop_reference=False)
    info, out, src = _paste_round_trip(c, square)
    assert info.box(0) == (0, 0, 400) and float((out - src).abs().mean()) < 0.01
    # a non-square reference was stretched to 512x512: a square box cannot undo that, so paste-back refuses
    wide = _rgb(_frames_with_faces(1))[0]
    c = cond.hellomeme_conditions(wide, wide[None], toolkit=_fake_toolkit(), pdfgc_encoder=enc, crop_reference=False)
    assert "stretched" in c.report()
    with pytest.raises(ValueError, match="original"):
        _paste_round_trip(c, wide)


# ---- built-in prompt -------------------------------------------------------------------------------------------------
def test_builtin_prompt_per_version():
    assert builtin_prompt("v5c", video=False) == builtin_prompt("v5b", video=False) == BUILTIN_PROMPT_NEW
    assert builtin_prompt("v5", video=False) == BUILTIN_PROMPT
    assert builtin_prompt("v5", video=True) == builtin_prompt("v5b", video=True) == BUILTIN_PROMPT
    assert BUILTIN_PROMPT_NEW.startswith("best quality, highly detailed, masterpiece") and BUILTIN_PROMPT_NEW != \
        BUILTIN_PROMPT
    with pytest.raises(ValueError):
        builtin_prompt("v4", video=False)


def _api(name):
    return json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())


def _one(graph, class_type):
    found = [k for k, v in graph.items() if v["class_type"] == class_type]
    assert len(found) == 1, (class_type, found)
    return found[0]


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_prompt_is_what_the_original_encodes(name):
    """The original encodes the built-in prompt alone when the user prompt is empty (else 'user, built-in'); the
    embeddings come from CLIP Text Encode, so its text must be that string for the loader's version and mode."""
    g = _api(name)
    loader = g[_one(g, "PortraitAnim_HelloMemeLoader")]["inputs"]
    sampler = next(v for v in g.values() if v["class_type"] in ("PortraitAnim_HelloMemeImage",
                                                                  "PortraitAnim_HelloMemeVideo"))
    positive = g[sampler["inputs"]["positive"][0]]
    assert positive["class_type"] == "CLIPTextEncode"
    expected = builtin_prompt(loader["version"], video=loader["mode"] == "video")
    assert positive["inputs"]["text"] == expected or positive["inputs"]["text"].endswith(", " + expected)
    assert g[sampler["inputs"]["negative"][0]]["inputs"]["text"] == ""


# ---- example workflows: wiring ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_pastes_back_with_the_conditions_crop(name):
    g = _api(name)
    cid = _one(g, "PortraitAnim_HelloMemeConditions")
    c = g[cid]["inputs"]
    assert c["crop_reference"] is True and c["driving_fps"] == 8.0
    assert g[c["reference"][0]]["class_type"] == "LoadImage"  # the whole reference, no pre-crop
    assert "PortraitAnim_FaceCrop" not in {v["class_type"] for v in g.values()}
    paste = g[_one(g, "PortraitAnim_FacePasteBack")]["inputs"]
    assert paste["crop_info"] == [cid, 4] and paste["original"] == c["reference"]
    for nid, node in g.items():  # every link points at an existing node
        for v in node["inputs"].values():
            if isinstance(v, list):
                assert v[0] in g, (nid, v)


def test_video_workflow_drives_at_8_fps_and_writes_that_rate():
    g = _api("HelloMeme video")
    cid = _one(g, "PortraitAnim_HelloMemeConditions")
    load = _one(g, "PortraitAnim_LoadVideoFrames")
    assert g[cid]["inputs"]["fps"] == [load, 1] and g[cid]["inputs"]["driving"] == [load, 0]
    video = g[_one(g, "PortraitAnim_FramesToVideo")]["inputs"]
    assert video["fps"] == [cid, 5]  # the resampled rate
    assert video["audio"] == [load, 2] and video["fit_audio"] is True  # the driving audio, fitted to the duration


@pytest.mark.parametrize("name", WORKFLOWS)
def test_ui_workflow_matches_the_api_graph_and_is_laid_out(name):
    ui = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    api = _api(name)
    nodes = {n["id"]: n for n in ui["nodes"] if n["type"] not in ("Note", "MarkdownNote")}  # Notes are UI-only
    assert {str(i) for i in nodes} == set(api) and {n["type"] for n in nodes.values()} == \
        {v["class_type"] for v in api.values()}
    links = {lk[0]: lk for lk in ui["links"]}
    assert len(links) == len(ui["links"]) and ui["last_link_id"] >= max(links) and ui["last_node_id"] >= max(nodes)
    seen = set()
    for n in ui["nodes"]:
        for inp in n.get("inputs", []):
            if inp.get("link") is None:
                continue
            lid, src, slot, dst, dslot, _ = links[inp["link"]]
            assert dst == n["id"] and n["inputs"][dslot]["link"] == lid
            assert lid in nodes[src]["outputs"][slot]["links"]
            assert api[str(n["id"])]["inputs"][inp["name"]] == [str(src), slot], (n["type"], inp["name"])
            seen.add(lid)
        for out in n.get("outputs", []):
            for lid in out.get("links") or []:
                assert links[lid][1] == n["id"]
    assert seen == set(links)  # no dangling link
    boxes = [(n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in ui["nodes"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)  # no overlap


# ---- the versions comparison example ---------------------------------------------------------------------------------
COMPARISON = "HelloMeme versions side by side"


def test_versions_workflow_runs_every_version_on_the_same_inputs():
    """One loader + image sampler per version (v1-v5c, image mode), all on the one Driving Conditions node with the
    same negative prompt, seed, steps, cfg and size, each with its released sampler ('auto') and the prompt the
    original encodes for it (the newer built-in prompt for v5c images only; v1-v5 the older one)."""
    g = _api(COMPARISON)
    cid = _one(g, "PortraitAnim_HelloMemeConditions")
    c = g[cid]["inputs"]
    assert c["crop_reference"] is True and g[c["reference"][0]]["class_type"] == "LoadImage"
    samplers = [k for k, v in g.items() if v["class_type"] == "PortraitAnim_HelloMemeImage"]
    versions = []
    shared = None
    for sid in samplers:
        inputs = g[sid]["inputs"]
        loader = g[inputs["hellomeme"][0]]
        assert loader["class_type"] == "PortraitAnim_HelloMemeLoader" and loader["inputs"]["mode"] == "image"
        version = loader["inputs"]["version"]
        versions.append(version)
        assert inputs["conditions"] == [cid, 0] and inputs["scheduler"] == "auto"
        expected = BUILTIN_PROMPT_NEW if version in ("v5b", "v5c") else BUILTIN_PROMPT  # the original's rule
        assert g[inputs["positive"][0]]["inputs"]["text"] == expected, version
        assert g[inputs["negative"][0]]["inputs"]["text"] == ""
        same = {k: inputs[k] for k in ("negative", "seed", "steps", "cfg", "width", "height", "size_correct",
                                       "driving_frame")}
        shared = shared or same
        assert same == shared, version
    assert versions == ["v1", "v2", "v3", "v4", "v5", "v5c"]
    assert len({g[s]["inputs"]["hellomeme"][0] for s in samplers}) == len(samplers)  # one loader per sampler
    # the grid: the reference crop, the driving face, then every version in order, each labelled with its version
    grid = g[_one(g, "PortraitAnim_LabelledImageGrid")]["inputs"]
    panels = [grid[f"image_{i}"] for i in range(1, 9) if f"image_{i}" in grid]
    assert panels[0] == [cid, 1] and panels[1] == c["driving"]
    assert panels[2:] == [[s, 0] for s in samplers]
    assert grid["labels"].splitlines() == ["reference", "driving"] + versions
    save = g[_one(g, "SaveImage")]["inputs"]
    assert save["images"] == [_one(g, "PortraitAnim_LabelledImageGrid"), 0]


def test_versions_ui_workflow_matches_its_api_graph_and_is_laid_out():
    test_ui_workflow_matches_the_api_graph_and_is_laid_out(COMPARISON)


# ---- LoRA as released ------------------------------------------------------------------------------------------------
class _TinyTextEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.text_model = nn.Module()
        self.text_model.encoder = nn.Module()
        self.text_model.encoder.layers = nn.ModuleList([nn.Module()])
        self.text_model.encoder.layers[0].mlp = nn.Module()
        self.text_model.encoder.layers[0].mlp.fc1 = nn.Linear(8, 8)


def _kohya(name, out_f, in_f, seed, alpha=None):
    g = torch.Generator().manual_seed(seed)
    d = {f"{name}.lora_down.weight": torch.randn(2, in_f, generator=g),
         f"{name}.lora_up.weight": torch.randn(out_f, 2, generator=g)}
    if alpha is not None:
        d[f"{name}.alpha"] = torch.tensor(float(alpha))
    return d


def test_lora_unet_and_text_encoder_scales_are_separate_and_nothing_is_dropped():
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    unet, te = tiny_unet(6), _TinyTextEncoder()
    u0, t0 = unet.state_dict()[q + ".weight"].clone(), te.text_model.encoder.layers[0].mlp.fc1.weight.clone()
    lora = {**_kohya("lora_unet_" + q.replace(".", "_"), 32, 32, 1),
            **_kohya("lora_te_text_model_encoder_layers_0_mlp_fc1", 8, 8, 2, alpha=1.0),
            **_kohya("lora_unet_not_a_layer", 4, 4, 3),
            "lora_unet_some_layer.hada_w1_a": torch.zeros(2, 2)}  # LoHa: unsupported
    report = merge_lora(unet, lora, scale=1.0, text_encoder=te, text_encoder_scale=0.3)
    up_q, down_q = lora[f"lora_unet_{q.replace('.', '_')}.lora_up.weight"], \
        lora[f"lora_unet_{q.replace('.', '_')}.lora_down.weight"]
    torch.testing.assert_close(unet.state_dict()[q + ".weight"], u0 + 1.0 * up_q @ down_q)
    up_t = lora["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"]
    down_t = lora["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"]
    torch.testing.assert_close(te.text_model.encoder.layers[0].mlp.fc1.weight, t0 + 0.3 * (1.0 / 2) * up_t @ down_t)
    assert report.applied == [q] and report.applied_text_encoder == ["text_model.encoder.layers.0.mlp.fc1"]
    assert sorted(report.skipped) == ["lora_unet_not_a_layer", "lora_unet_some_layer.hada_w1_a"]
    text_lines = "\n".join(report.lines())
    assert "lora_unet_not_a_layer" in text_lines and "UNet layer(s) at 1" in text_lines
    assert "text-encoder layer(s) at 0.3" in text_lines

    # a text-encoder-only LoRA with no text encoder here: reported (what to do instead), not an error, not silent
    only_te = _kohya("lora_te_text_model_encoder_layers_0_mlp_fc1", 8, 8, 2)
    r = merge_lora(tiny_unet(6), only_te, scale=1.0, text_encoder_scale=0.7)
    assert r.applied == [] and r.text_encoder_skipped == ["lora_te_text_model_encoder_layers_0_mlp_fc1"]
    assert any("NOT applied" in line and "strength_clip 0.7" in line for line in r.lines())


def test_load_models_reports_the_text_encoder_part_of_a_lora(tmp_path):
    from safetensors.torch import save_file

    from test_hellomeme_pipeline import UNET, UP_CHANNELS, VAE, _save_folder, tiny_vae

    from portrait_animation.sk_attention.adapters import ReferenceAdapter
    from portrait_animation.sk_attention.pipeline_image import load_models

    ckpt, official = tmp_path / "checkpoint", tmp_path / "sd15"
    for root, seed in ((ckpt, 10), (official, 20)):
        _save_folder(root / "unet", tiny_unet(seed), {"_class_name": "UNet2DConditionModel", **UNET})
        _save_folder(root / "vae", tiny_vae(seed + 1), {"_class_name": "AutoencoderKL", **VAE})
    ref_cfg = {"_class_name": "HM5bReferenceAdapter", "block_down_channels": list(UNET["block_out_channels"]),
               "block_up_channels": list(UP_CHANNELS), "num_attention_heads": 8, "use_3d": False}
    ref = _save_folder(tmp_path / "ref", ReferenceAdapter(block_up_channels=UP_CHANNELS, variant="v5b"), ref_cfg)
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    lora = tmp_path / "style.safetensors"
    save_file({**_kohya("lora_unet_" + q.replace(".", "_"), 32, 32, 1),
               **_kohya("lora_te_text_model_encoder_layers_0_mlp_fc1", 8, 8, 2)}, str(lora))
    models = load_models("v5c", ckpt, official, ref, lora=lora, lora_scale=0.4)
    lines = "\n".join(models.lora_report)
    assert "style.safetensors" in lines and "UNet at 1.0" in lines
    assert "NOT applied" in lines and "strength_clip 0.4" in lines


# ---- CONDITIONING ----------------------------------------------------------------------------------------------------
def _cond(tokens=77, width=768, **extra):
    return [torch.randn(1, tokens, width), {"pooled_output": torch.randn(1, width), **extra}]


def test_conditioning_entries_are_honoured_or_refused_by_name():
    one = prompt_entries([_cond()], "positive")
    assert len(one.embeds) == 1 and one.weights == [1.0]
    combined = prompt_entries([_cond(), _cond(strength=0.5)], "positive")  # Conditioning Combine + strength
    assert combined.weights == [1.0, 0.5]
    long = prompt_entries([_cond(tokens=154)], "positive")  # Conditioning Concat / long prompt
    assert long.embeds[0].shape == (1, 154, 768)
    assert prompt_entries([_cond(start_percent=0.0, end_percent=1.0)], "negative").weights == [1.0]
    with pytest.raises(ValueError, match=r"input 'positive' \(entry 2 of 2\).*'area'"):
        prompt_entries([_cond(), _cond(area=(8, 8, 0, 0), strength=1.0)], "positive")
    with pytest.raises(ValueError, match=r"input 'negative'.*'mask'"):
        prompt_entries([_cond(mask=torch.ones(1, 8, 8), set_area_to_bounds=False)], "negative")
    with pytest.raises(ValueError, match=r"input 'positive'.*timestep range \(0.2 to 1\)"):
        prompt_entries([_cond(start_percent=0.2, end_percent=1.0)], "positive")
    with pytest.raises(ValueError, match=r"'control'"):
        prompt_entries([_cond(control=object())], "positive")
    with pytest.raises(ValueError, match=r"input 'positive'.*1024-wide.*SD1.5 CLIP"):
        prompt_entries([_cond(width=1024)], "positive")
    with pytest.raises(ValueError, match="sum to 0"):
        prompt_entries([_cond(strength=0.0)], "positive")
    with pytest.raises(ValueError, match="empty"):
        prompt_entries([], "positive")


def test_sizes_are_checked_naming_the_input():
    assert check_size(512, 512) is True and check_size(64, 2048) is True and check_size(None, 576) is True
    msg = check_size(520, 512)
    assert isinstance(msg, str) and msg.startswith("width 520") and "multiple of 64" in msg
    assert check_size(512, 4096).startswith("height 4096")
    assert check_size(0, 512).startswith("width 0")


def test_text_rows_pad_different_lengths_by_whole_repeats():
    a, b = text(1), torch.randn(1, 10, TEXT)
    rows = text_rows(PromptEntries([a, b], [3.0, 1.0]), text(2), guided=True, batch=1)
    assert rows.count == 3 and rows.negative == 1 and rows.text.shape == (3, 10, TEXT)
    torch.testing.assert_close(rows.row(1), torch.cat([a, a], dim=1))
    torch.testing.assert_close(rows.row(2), b)
    # guided weighted mean per side, then CFG
    eps = torch.stack([torch.full((1, 2), v) for v in (1.0, 5.0, 9.0)]).reshape(3, 2)
    out = rows.combine(eps, 2.0)
    torch.testing.assert_close(out, torch.full((1, 2), 1.0 + 2.0 * ((3 * 5.0 + 9.0) / 4 - 1.0)))


def _step0(models, positive, negative, hw=(128, 128), **kw):
    preds = []
    controls = computed_controls(models, 1, hw)
    with torch.no_grad():
        out = generate_image(models, runtime(), reference_image(hw), positive, controls,
                             negative_prompt_embeds=negative, steps=2, guidance_scale=1.5, noise=3,
                             observer=lambda e, d: preds.append(d["noise_pred"]) if e == "step" else None, **kw)
    return preds[0], out


@pytest.mark.slow
def test_combined_conditioning_is_the_strength_weighted_mean_of_the_predictions():
    models, _ = tiny_models("v5", video=False)
    a, b, neg = text(11), text(12), text(13)
    pa, _ = _step0(models, a, neg)
    pb, _ = _step0(models, b, neg)
    pab, out = _step0(models, PromptEntries([a, b], [3.0, 1.0]), PromptEntries([neg], [1.0]))
    torch.testing.assert_close(pab, (3 * pa + pb) / 4, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(pab, pa, atol=1e-3)
    # one entry twice is the single entry (its weight cancels, as in ComfyUI)
    p_twice, twice = _step0(models, PromptEntries([a, a], [0.2, 0.7]), neg)
    torch.testing.assert_close(p_twice, pa, rtol=1e-4, atol=1e-4)
    # a negative of another length (concatenated positive) is repeated to the common length: same attention
    long = torch.cat([a, b], dim=1)
    p_long, _ = _step0(models, long, neg)
    p_long_rep, _ = _step0(models, long, torch.cat([neg, neg], dim=1))
    torch.testing.assert_close(p_long, p_long_rep, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_video_with_combined_conditioning_matches_the_single_entry():
    # float64 networks: the two runs batch 2 and 4 text rows, whose float32 GEMMs round differently (~1e-7 of the
    # value), and one step from t = 999 scales the prediction by 1/alpha_T/scaling_factor (~80x) into latents of
    # magnitude ~300, so in float32 the thread count alone decides whether an element lands within 1e-4. In float64
    # only the pipeline's own float32 latents round, and the check is on how the entries are combined.
    models, _ = tiny_models("v5b")
    for field in dataclasses.fields(models):
        if isinstance(getattr(models, field.name), nn.Module):
            getattr(models, field.name).double()
    models = dataclasses.replace(models, dtype=torch.float64)
    a, neg = text(1).double(), text(2).double()

    def run(positive, negative):
        controls = computed_controls(models, 13, (128, 128))
        job = VideoGeneration(models, runtime(), reference_image((128, 128)), positive, controls,
                              negative_prompt_embeds=negative, steps=1, guidance_scale=1.5, noise=4, decode=False)
        with torch.no_grad():
            return job.run(), job

    single, job1 = run(a, neg)
    double, job2 = run(PromptEntries([a, a], [1.0, 2.0]), PromptEntries([neg, neg], [1.0, 1.0]))
    assert job2.stats.pad_computations > 0  # the keyframe pads ran for every text row
    torch.testing.assert_close(double, single, rtol=1e-4, atol=1e-4)
    other, _ = run(PromptEntries([a, text(5).double()], [1.0, 1.0]), neg)
    assert not torch.allclose(other, single, atol=1e-4)
