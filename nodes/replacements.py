"""Old node ids this pack answers to, registered with ComfyUI's node replacement API.

When a workflow names a node type the server does not know but a replacement is registered for, the frontend lists it
under the missing nodes with a "replace" action (it reads ``GET /node_replacements``), and the server rewrites API
prompts it receives (``POST /prompt``) before validating them. ComfyUI added this API after 0.3.64; on a server
without it nothing is registered and the pack loads as before.

``REPLACEMENTS`` is the one table: this pack's own renamed ids, and the node ids of the other packs for the same
models (``PEER_PACKS``) where one of this pack's nodes does the same job. A row without mappings is a pure rename (same
inputs, widgets and outputs): the frontend then maps every link and widget value by name, which is the API's intended
use for same-structure renames and needs no knowledge of the frontend's widget order. A row that renames or drops
inputs gives ``inputs`` (new input id -> old input id), ``set_values`` (new input id -> fixed value), ``outputs`` (old
output index -> new) and ``old_widget_ids`` (the OLD node's widget ids in the order its ``widgets_values`` are saved,
``control_after_generate`` included where the frontend added one after a seed; that is how the frontend finds each
old widget value). What the frontend does with a mapped row (1.49): every ``inputs`` pair moves the old input's link
and copies the old widget's saved value onto the new widget of that name (the value as saved: the API converts no
values); ``set_values`` sets widgets; ``outputs`` moves output links; every input, widget and output not named stays
behind (the new node shows its own defaults there). ``dropped`` records, for the README and the tests, why each old
input or output that is not carried is left out.

A peer node is mapped only when the new node is complete without anything the old graph cannot give it: each of its
required links comes from the old node's links, and values it does not get keep the pack's defaults. Nodes of a
different shape (a different split of the work, outputs of another kind) are listed in ``NOT_MAPPED`` with the
reason, and get no replacement: a swap there would hand the user a node that cannot run or does something else.

Known limit of the server side in ComfyUI 0.33.0: for an API prompt it keeps only the inputs named in ``inputs``
(none for a pure rename), fills no defaults and fails on a mapped input the prompt lacks, so an API-format workflow
with an old id gets a "required input missing" error there. ``tools/queue_batch.py`` applies the server's table
itself before queueing (mapped inputs, then the new node's defaults from ``/object_info``, output links renumbered).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("portrait_animation")


@dataclass(frozen=True)
class Replacement:
    old_id: str
    new_id: str
    inputs: dict[str, str] | None = None  # new input id -> old input id
    set_values: dict[str, Any] | None = None  # new input id -> value
    outputs: dict[int, int] | None = None  # old output index -> new output index
    old_widget_ids: tuple[str, ...] | None = None  # the old node's widgets, in widgets_values order
    source: str = "this pack"  # where the old id comes from: this pack, or a repository of PEER_PACKS
    dropped: dict[str, str] | None = None  # old input id (or "output <name>") not carried -> why

    def as_kwargs(self) -> dict:
        """Keyword arguments for ``comfy_api.v0_0_2.io.NodeReplace``."""
        mapping = [{"new_id": new, "old_id": old} for new, old in (self.inputs or {}).items()]
        mapping += [{"new_id": new, "set_value": value} for new, value in (self.set_values or {}).items()]
        outputs = [{"old_idx": old, "new_idx": new} for old, new in (self.outputs or {}).items()]
        return {"new_node_id": self.new_id, "old_node_id": self.old_id,
                "old_widget_ids": list(self.old_widget_ids) if self.old_widget_ids else None,
                "input_mapping": mapping or None, "output_mapping": outputs or None}


# Commit b07f5e9 changed this pack's ids from PortraitAnim<Name> to PortraitAnim_<Name>; inputs and outputs stayed.
_UNDERSCORED = ("FaceDetector", "DetectFaceLandmarks", "FaceCrop", "FacePasteBack", "LoadAudio", "PrepareAudio",
                "LoadVideoFrames", "VideoToFrames", "FramesToVideo")

# The other ComfyUI packs for the same models, as surveyed (node ids and inputs: tests/peers/signatures.json).
HELLOMEME_OFFICIAL = "HelloVision/ComfyUI_HelloMeme"
IF_MEMO_AVATAR = "if-ai/ComfyUI-IF_MemoAvatar"
BOB_HUNYUAN = "BobRandomNumber/ComfyUI_HunyuanPortrait"
PEER_PACKS = (HELLOMEME_OFFICIAL, IF_MEMO_AVATAR, BOB_HUNYUAN)

_HM_LOADER_WIDGETS = ("checkpoint", "lora", "vae", "version", "stylize", "deployment", "lora_scale", "dtype")
_HM_LOADER_DROPPED = {
    "checkpoint": "not carried: the official pack names its choices 'SD1.5' and '[preset]<name>' (songkey/* "
                  "repositories it downloads), which this loader does not offer; it starts at 'official SD1.5' "
                  "(the official default): pick a file from models/checkpoints again if you used one",
    "lora": "not carried: 'None' and '[preset]<name>' are not this loader's names; it starts at 'none': pick a file "
            "from models/loras again if you used one",
    "vae": "the pack decodes with the checkpoint's VAE (the official default, 'same as checkpoint')",
    "deployment": "the pack downloads from the Hugging Face Hub, and finds files already in the Hugging Face or "
                  "ModelScope cache first",
}


def _hm_loader(old_id: str, mode: str) -> Replacement:
    return Replacement(
        old_id, "PortraitAnim_HelloMemeLoader", source=HELLOMEME_OFFICIAL, old_widget_ids=_HM_LOADER_WIDGETS,
        inputs={"version": "version", "stylize": "stylize", "lora_scale": "lora_scale", "dtype": "dtype"},
        set_values={"mode": mode}, outputs={0: 0}, dropped=_HM_LOADER_DROPPED)


REPLACEMENTS: tuple[Replacement, ...] = (
    *(Replacement(f"PortraitAnim{name}", f"PortraitAnim_{name}") for name in _UNDERSCORED),
    # ---- HelloVision/ComfyUI_HelloMeme: the loaders
    _hm_loader("HMImagePipelineLoader", "image"),
    _hm_loader("HMVideoPipelineLoader", "video"),
    Replacement(
        "HMFaceToolkitsLoader", "PortraitAnim_HelloMemeToolkit", source=HELLOMEME_OFFICIAL,
        old_widget_ids=("gpu_id", "deployment"), outputs={0: 0},
        dropped={"gpu_id": "ComfyUI's device management places the face models",
                 "deployment": _HM_LOADER_DROPPED["deployment"]}),
    # ---- BobRandomNumber/ComfyUI_HunyuanPortrait: the whole graph (loader -> preprocessor -> generator)
    Replacement(
        "HunyuanPortrait_ModelLoader", "PortraitAnim_HunyuanPortraitLoader", source=BOB_HUNYUAN,
        old_widget_ids=("model_folder", "vae_name", "precision", "device"),
        inputs={"dtype": "precision"}, set_values={"download": False}, outputs={0: 0},
        dropped={"model_folder": "the loader finds the same files under models/HunyuanPortrait/ (hyportrait/*.pth, "
                                 "arcface.onnx, yoloface_v5m.pt) itself; download is set off, so nothing is "
                                 "fetched behind your back: a missing file is named",
                 "vae_name": "the SVD VAE is found as models/vae/diffusion_pytorch_model.fp16.safetensors (the file "
                             "that pack asks for) or models/checkpoints/svd_xt.safetensors",
                 "device": "ComfyUI's device management places the models"}),
    Replacement(
        "HunyuanPortrait_Preprocessor", "PortraitAnim_HunyuanPortraitConditions", source=BOB_HUNYUAN,
        old_widget_ids=("limit_frames", "output_crop_size", "dwpose_crop_area_scale", "use_arcface",
                        "driving_video_fps"),
        inputs={"hunyuan_portrait": "hunyuan_models", "reference": "source_image", "driving": "driving_video_frames",
                "size": "output_crop_size", "fps": "driving_video_fps"},
        outputs={0: 0},
        dropped={"limit_frames": "every driving frame is animated: cap the frames on the video loader instead "
                                 "(e.g. Load Video (Frames)'s frame_cap)",
                 "dwpose_crop_area_scale": "had no effect there either (the original only draws an unused mask "
                                           "with it); the crop is the original's",
                 "use_arcface": "now the loader's arcface switch (on by default, as there)",
                 "output driving_data": "the conditions carry the driving frames; its link to the generator goes"}),
    Replacement(
        "HunyuanPortrait_Generator", "PortraitAnim_HunyuanPortraitSampler", source=BOB_HUNYUAN,
        old_widget_ids=("height", "width", "num_inference_steps", "min_appearance_guidance_scale",
                        "max_appearance_guidance_scale", "min_motion_guidance_scale", "max_motion_guidance_scale",
                        "fps_generation", "motion_bucket_id", "noise_aug_strength", "decode_chunk_size",
                        "i2i_noise_strength", "n_sample_frames_batching", "pad_motion_frames", "window_overlap",
                        "window_shift_offset", "seed", "control_after_generate",
                        "motion_translation_scale_factor"),
        inputs={"hunyuan_portrait": "hunyuan_models", "conditions": "preprocessed_data", "seed": "seed",
                "steps": "num_inference_steps", "appearance_guidance": "max_appearance_guidance_scale",
                "motion_guidance": "max_motion_guidance_scale", "window": "n_sample_frames_batching",
                "overlap": "window_overlap", "shift": "window_shift_offset", "pad_frames": "pad_motion_frames",
                "fps_id": "fps_generation", "motion_bucket": "motion_bucket_id", "noise_aug": "noise_aug_strength",
                "decode_chunk": "decode_chunk_size"},
        outputs={0: 0},
        dropped={"driving_data": "the conditions carry the driving frames",
                 "height": "the crop size is the Driving Conditions' size (output_crop_size is carried there)",
                 "width": "the crop size is the Driving Conditions' size (output_crop_size is carried there)",
                 "min_appearance_guidance_scale": "one guidance per branch, constant over the steps: the max "
                                                  "value is carried (min = max in the original config and in "
                                                  "that pack's defaults)",
                 "min_motion_guidance_scale": "one guidance per branch, constant over the steps: the max value is "
                                              "carried (min = max in the original config and in that pack's "
                                              "defaults)",
                 "i2i_noise_strength": "sampling always starts from the reference plus full noise, the original's "
                                       "1.0",
                 "motion_translation_scale_factor": "head translation is zeroed, as in the original (that "
                                                    "pack's default 0.0)"}),
)

# Peer node ids with no replacement, and why (the README's "Migrating from other packs" lists them).
NOT_MAPPED: dict[str, tuple[str, str]] = {
    "GetFaceLandmarks": (HELLOMEME_OFFICIAL, "face analysis is one node here: HelloMeme Driving Conditions takes "
                                             "the toolkit, the reference and the driving images and computes "
                                             "landmarks, head pose and expression itself"),
    "GetHeadPose": (HELLOMEME_OFFICIAL, "part of HelloMeme Driving Conditions (see GetFaceLandmarks); its crop "
                                        "switch is Conditions' crop_reference"),
    "GetExpression": (HELLOMEME_OFFICIAL, "part of HelloMeme Driving Conditions; the ARKit expression is the "
                                          "toolkit's expression 'arkit'"),
    "GetExpression2": (HELLOMEME_OFFICIAL, "part of HelloMeme Driving Conditions; PD-FGC is the toolkit's "
                                           "expression 'pdfgc' (the default)"),
    "HMPipelineImage": (HELLOMEME_OFFICIAL, "takes head poses and expressions from the face nodes and prompts as "
                                            "text; HelloMeme Image takes one conditions link and CONDITIONING from "
                                            "CLIP Text Encode, so a swap would leave three required inputs unwired "
                                            "and drop the prompt text. Its settings: steps, seed and "
                                            "guidance_scale are HelloMeme Image's steps, seed and cfg; trans_ratio "
                                            "is on Driving Conditions"),
    "HMPipelineVideo": (HELLOMEME_OFFICIAL, "as HMPipelineImage, for HelloMeme Video; patch_overlap has no "
                                            "counterpart (the pack's video windows are the released ones)"),
    "IF_MemoCheckpointLoader": (IF_MEMO_AVATAR, "its six outputs are the separate networks typed as core MODEL / "
                                                "VAE for IF_MemoAvatar only; MEMO Loader gives one bundle for MEMO "
                                                "Audio Conditioner and MEMO Talking Portrait, and enable_xformers "
                                                "has no counterpart (attention is a Speed Options choice)"),
    "IF_MemoAvatar": (IF_MEMO_AVATAR, "one node for what the pack splits into MEMO Audio Conditioner (audio, "
                                      "fps, num_frames_per_clip -> clip_length) and MEMO Talking Portrait (image -> "
                                      "reference, resolution, inference_steps -> steps, cfg_scale -> cfg, seed); "
                                      "its outputs are a file path and a status text, not frames"),
}


def _replacement_api():
    """(register coroutine function, NodeReplace class), or None on a ComfyUI without the node replacement API."""
    try:
        from comfy_api.v0_0_2 import ComfyAPI, io
    except ImportError:
        return None
    node_replace = getattr(io, "NodeReplace", None)
    registry = getattr(ComfyAPI(), "node_replacement", None)
    if node_replace is None or registry is None:
        return None
    return registry.register, node_replace


async def register_replacements(node_ids: set[str]) -> int:
    """Register every row whose new node is loaded (``node_ids``); returns how many were registered.

    A row whose new node is missing (its module failed to import) is skipped: offering to swap in a node the server
    cannot run would only trade one missing node for another. Never raises: replacements are a convenience and must
    not take the pack's nodes down with them."""
    api = _replacement_api()
    if api is None:
        return 0
    register, node_replace = api
    count = 0
    for row in REPLACEMENTS:
        if row.new_id not in node_ids:
            continue
        try:
            await register(node_replace(**row.as_kwargs()))
            count += 1
        except Exception as e:  # an API change must not break loading
            log.warning("Portrait Animation: could not register node replacement %s -> %s: %s",
                        row.old_id, row.new_id, e)
    return count
