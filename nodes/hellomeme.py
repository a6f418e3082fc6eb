"""HelloMeme nodes: loader, face toolkit, driving conditions (cached separately), image and video samplers."""
from __future__ import annotations

import logging

from comfy_api.v0_0_2 import io

from ..sk_attention.conditioning import (BUILTIN_PROMPT, BUILTIN_PROMPT_NEW, SIZE_MAX, SIZE_MIN, SIZE_MULTIPLE,
                                         TEXT_WIDTH, check_size, prompt_entries)
from .common import CATEGORY, DTYPES, PREFIX, PREVIEW_NOTE, CropInfo, node_runtime, output_input
from .resume import resume_input, resume_options
from .speed import speed_input

log = logging.getLogger("portrait_animation")

CAT_HM = f"{CATEGORY}/HelloMeme"
HelloMeme = io.Custom("PA_HELLOMEME")
Toolkit = io.Custom("PA_HM_TOOLKIT")
Conditions = io.Custom("PA_HM_CONDITIONS")


def _files(folder: str) -> list[str]:
    import folder_paths

    try:
        return sorted(folder_paths.get_filename_list(folder))
    except KeyError:
        return []


def _full_path(folder: str, name: str):
    import folder_paths

    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise ValueError(f"{folder} file '{name}' not found: pick one from the list (models/{folder})")
    return path


def _checked_size(width, height):
    ok = check_size(width, height)
    if ok is not True:
        raise ValueError(ok)


def _sampler_inputs():
    return [
        HelloMeme.Input("hellomeme", tooltip="Models from HelloMeme Loader."),
        Conditions.Input("conditions", tooltip="From HelloMeme Driving Conditions (reference + driving poses)."),
        io.Conditioning.Input("positive", tooltip=(
            "Prompt (CLIP Text Encode with an SD1.5 CLIP). The original encodes '<your prompt>, <built-in prompt>' "
            "(the built-in alone when yours is empty); put it in your text to match it. Built-in for v5b/v5c images: "
            f"'{BUILTIN_PROMPT_NEW}'; for v5 images and all videos: '{BUILTIN_PROMPT}'. Conditioning Combine "
            "(weighted by strength) and Concat work; area, mask and timestep ranges are refused.")),
        io.Conditioning.Input("negative", tooltip="Negative prompt (the original uses an empty one). Same rules as "
                                                  "'positive'."),
        io.Int.Input("seed", default=1, min=0, max=2**63 - 1, control_after_generate=True,
                     tooltip="Seed of the initial noise and of the SDE sampler's noise."),
        io.Int.Input("steps", default=25, min=1, max=200, tooltip="Denoising steps (the original uses 25)."),
        io.Float.Input("cfg", default=1.5, min=1.0, max=20.0, step=0.05,
                       tooltip="Guidance scale; 1.5 as in the original scripts (<= 1 disables guidance)."),
        io.Combo.Input("scheduler", options=["auto", "dpmpp_sde", "euler"], default="auto",
                       tooltip="DPM++ SDE is what v5 was released with (and v3/v4 images); Euler is the v1/v2 sampler "
                               "and the v3/v4 video sampler. auto: the loaded version's released sampler."),
        io.Int.Input("width", default=512, min=SIZE_MIN, max=SIZE_MAX, step=SIZE_MULTIPLE,
                     tooltip="Output width: a multiple of 64 from 64 to 2048. The released model works at 512x512; "
                             "non-square sizes need 'size_correct'."),
        io.Int.Input("height", default=512, min=SIZE_MIN, max=SIZE_MAX, step=SIZE_MULTIPLE,
                     tooltip="Output height: a multiple of 64 from 64 to 2048."),
        io.Boolean.Input("size_correct", default=False,
                         tooltip="Fix the v5 reference block's square-only position table so non-square sizes work "
                                 "(identical results on square sizes)."),
        speed_input(),
    ]


def _scheduler(choice: str):
    """The sampler input -> the pipelines' scheduler (None: the version's released one)."""
    return None if choice == "auto" else choice


def _text(models, positive, negative):
    """Both CONDITIONING inputs as :class:`PromptEntries`, checked against the UNet's text width (before any work)."""
    width = int(getattr(models.denoiser.unet.config, "cross_attention_dim", TEXT_WIDTH))
    return prompt_entries(positive, "positive", width), prompt_entries(negative, "negative", width)


def _prepare(hellomeme, conditions, width, height):
    import torch.nn.functional as F

    def resize(img):  # IMAGE (B, H, W, 3) -> (B, height, width, 3)
        if img.shape[1:3] == (height, width):
            return img
        return F.interpolate(img.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", antialias=True,
                             align_corners=False).permute(0, 2, 3, 1).clamp(0, 1)

    from ..sk_attention.pipeline_image import controls_from_drive_params

    def resize_params(params):  # pose images (B, 3, F, H, W) follow the output size
        params = dict(params)
        c = params["condition"]
        if c.shape[-2:] != (height, width):
            b, ch, f = c.shape[:3]
            flat = c.permute(0, 2, 1, 3, 4).reshape(b * f, ch, *c.shape[-2:])
            flat = F.interpolate(flat, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
            params["condition"] = flat.reshape(b, f, ch, height, width).permute(0, 2, 1, 3, 4)
        return params

    models = hellomeme["models"]
    controls = controls_from_drive_params(models, resize_params(conditions.drive_params()))
    ref_controls = (controls_from_drive_params(models, resize_params(conditions.ref_params))
                    if models.version == "v5c" else None)
    return models, resize(conditions.reference_image), controls, ref_controls


class HelloMemeLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ..sk_attention.loading import IMAGE_VERSIONS, OFFICIAL

        return io.Schema(
            node_id=f"{PREFIX}_HelloMemeLoader",
            display_name="HelloMeme Loader",
            category=CAT_HM,
            description="Loads HelloMeme v1 to v5c (official songkey/hm* files, strict) on an SD1.5 checkpoint of "
                        "your choice, under ComfyUI's model management. Missing files are listed with source and "
                        "destination, or downloaded when 'download' is on.",
            inputs=[
                io.Combo.Input("version", options=list(IMAGE_VERSIONS), default="v5c",
                               tooltip="v5c: best images and style transfer (image only; the reference is also read "
                                       "with its own pose). v5b: best likeness, images and video. v5: the lighter "
                                       "v5, images and video (the released video default). v4 / v3: the 2025 "
                                       "keyframe video models with AnimateDiff (v4: projector-based control). v2 / "
                                       "v1: the first releases, 12-frame AnimateDiff windows after a per-frame "
                                       "pre-pass (Euler); weaker expression, for comparison. See the README's "
                                       "version table."),
                io.Combo.Input("mode", options=["image", "video"], default="image",
                               tooltip="video adds the motion modules (every version but v5c)."),
                io.Combo.Input("checkpoint", options=[OFFICIAL] + _files("checkpoints"), default=OFFICIAL,
                               tooltip="SD1.5-derived checkpoint for the denoising UNet and the decoding VAE (the "
                                       "style). 'official SD1.5' uses the base weights."),
                io.Combo.Input("stylize", options=["x1", "x2"], default="x1",
                               tooltip="x1 (as released): the reference is read with official SD1.5. x2: with the "
                                       "chosen checkpoint too (stronger style, weaker likeness)."),
                io.Combo.Input("lora", options=["none"] + _files("loras"), default="none",
                               tooltip="Optional SD1.5 LoRA, merged as released: into the denoising UNet at 1.0 "
                                       "(x2: the reference UNet too). Its text-encoder part cannot be merged here "
                                       "(prompts come from your CLIP): the report says so; load the LoRA on the "
                                       "CLIP (LoraLoader, strength_model 0, strength_clip = lora_scale) to match."),
                io.Float.Input("lora_scale", default=1.0, min=-4.0, max=4.0, step=0.05,
                               tooltip="The released text-encoder LoRA strength (the UNet LoRA is always at 1.0, "
                                       "as released). Use it as strength_clip on your CLIP's LoraLoader."),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="Precision; auto follows ComfyUI (fp16/bf16 on a GPU, fp32 on the CPU)."),
                io.Boolean.Input("download", default=True,
                                 tooltip="Download missing official files into ComfyUI's models folder (files you "
                                         "already have, under the names other packs use, are found first). Off: "
                                         "only report what is missing and where it goes."),
            ],
            outputs=[HelloMeme.Output(display_name="hellomeme", tooltip="The loaded HelloMeme models."),
                     io.String.Output(display_name="report",
                                      tooltip="What was loaded; what a LoRA merged and what it could not apply.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, version=None, mode=None):
        from ..sk_attention.loading import IMAGE_VERSIONS, VIDEO_VERSIONS

        if version is not None and version not in IMAGE_VERSIONS:
            return f"unknown HelloMeme version {version!r}: use one of {', '.join(IMAGE_VERSIONS)}"
        if mode is not None and mode not in ("image", "video"):
            return f"mode must be 'image' or 'video', got {mode!r}"
        if mode == "video" and version is not None and version not in VIDEO_VERSIONS:
            return (f"HelloMeme {version} is an image-only version: pick mode 'image', or one of "
                    f"{', '.join(VIDEO_VERSIONS)} for video")
        return True

    @classmethod
    def execute(cls, version, mode, checkpoint, stylize, lora, lora_scale, dtype, download) -> io.NodeOutput:
        from ..runtime import parse_dtype
        from ..sk_attention.loading import OFFICIAL, load_hellomeme

        models = load_hellomeme(
            version=version, video=mode == "video",
            checkpoint=None if checkpoint == OFFICIAL else _full_path("checkpoints", checkpoint),
            stylize=stylize, lora=None if lora == "none" else _full_path("loras", lora), lora_scale=lora_scale,
            dtype=parse_dtype(dtype), download=download)
        lines = [f"HelloMeme {version} ({mode}), checkpoint {checkpoint}, stylize {stylize}"]
        for line in getattr(models, "lora_report", None) or []:
            lines.append(line)
            if "NOT applied" in line:
                log.warning("Portrait Animation: %s", line)
        return io.NodeOutput({"models": models, "video": mode == "video"}, "\n".join(lines))


class HelloMemeToolkit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_HelloMemeToolkit",
            display_name="HelloMeme Face Toolkit",
            category=CAT_HM,
            description="The face models that turn faces into HelloMeme's driving signals: head pose (official 3DMM, or "
                        "an offline approximation from MediaPipe landmarks) and expression (PD-FGC, or ARKit "
                        "blendshapes + CLIP face parts).",
            inputs=[
                io.Combo.Input("head_pose", options=["3dmm", "approximate"], default="3dmm",
                               tooltip="3dmm: the official ONNX toolkit (222 landmarks, 3DMM). approximate: MediaPipe "
                                       "landmarks + a rigid fit, works offline; an approximation, not the original."),
                io.Combo.Input("expression", options=["pdfgc", "arkit"], default="pdfgc",
                               tooltip="pdfgc (default of v5): PD-FGC motion codes. arkit: 51 blendshapes + CLIP face "
                                       "parts (needs head_pose 3dmm)."),
                io.Boolean.Input("download", default=True,
                                 tooltip="Download missing official files into ComfyUI's models folder (files you "
                                         "already have, under the names other packs use, are found first). Off: "
                                         "only report what is missing and where it goes."),
            ],
            outputs=[Toolkit.Output(display_name="toolkit", tooltip="Face toolkit for HelloMeme Driving Conditions.")],
        )

    @classmethod
    def execute(cls, head_pose, expression, download) -> io.NodeOutput:
        from ..motion.hellomeme import toolkit as tk
        from ..sk_attention.loading import load_pdfgc_encoder

        if head_pose == "approximate" and expression == "arkit":
            raise ValueError("expression 'arkit' needs head_pose '3dmm' (the official landmarks); use 'pdfgc' with "
                             "the approximate head pose")
        kit = {"head_pose": head_pose, "expression": expression, "download": download,
               "toolkit": tk.HelloFaceToolkit(download=download) if head_pose == "3dmm" else None,
               "pdfgc": load_pdfgc_encoder(download=download) if expression == "pdfgc" else None}
        return io.NodeOutput(kit)


class HelloMemeConditions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_HelloMemeConditions",
            display_name="HelloMeme Driving Conditions",
            category=CAT_HM,
            description="Extracts head pose and expression from the driving frames and the reference portrait, and "
                        "draws the pose images. Cached apart from sampling, so trying seeds or prompts does not "
                        "re-run the face models. Video is driven at 8 fps by default, as released; crop_info puts "
                        "the result back into the reference with Face Paste Back.",
            inputs=[
                Toolkit.Input("toolkit", tooltip="From HelloMeme Face Toolkit."),
                io.Image.Input("reference", tooltip="The portrait to animate (first image), whole: the node frames it "
                                                    "as the original does and returns that crop as crop_info."),
                io.Image.Input("driving", tooltip="Driving frames (a video as an IMAGE batch, or one image)."),
                io.Float.Input("trans_ratio", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="How much of the driving head's movement (relative to its first frame) moves "
                                       "the generated head; 0 keeps it in place."),
                io.Boolean.Input("crop_reference", default=True,
                                 tooltip="Crop the reference as the original: a square of 3x the face, moved up "
                                         "(0.115 of its side), kept inside the image. Off: resize the whole image to "
                                         "512x512 (stretched if not square; then it cannot be pasted back)."),
                io.Combo.Input("on_missing", options=["error", "fill_nearest"], default="error",
                               tooltip="Driving frames without a face: stop naming them, or repeat the nearest "
                                       "frame's pose and expression (reported)."),
                io.Float.Input("fps", default=0.0, min=0.0, max=1000.0, step=0.01,
                               tooltip="Frame rate of the driving frames: connect Load Video (Frames)'s fps output "
                                       "(0 = unknown; needed to resample a video to driving_fps)."),
                io.Float.Input("driving_fps", default=8.0, min=0.0, max=240.0, step=0.5,
                               tooltip="Drive at this frame rate: the driving frames are resampled in time (nearest "
                                       "frame, as the original's re-encode to 8 fps). 8 as released; 0 keeps every "
                                       "frame at the source rate. The fps output gives the result's rate for Frames "
                                       "To Video, so the video keeps its duration and its audio stays in sync."),
            ],
            outputs=[
                Conditions.Output(display_name="conditions", tooltip="Pose images and expression codes."),
                io.Image.Output(display_name="reference_crop", tooltip="The 512 reference crop HelloMeme animates."),
                io.Image.Output(display_name="pose_images", tooltip="The drawn pose images (what the control net "
                                                                    "sees), for checking the head pose."),
                io.String.Output(display_name="report", tooltip="Frames, frame rate, filled frames and notes."),
                CropInfo.Output(display_name="crop_info",
                                tooltip="Where reference_crop came from in the reference (the original's framing: 3x "
                                        "the face, moved up): connect it with the reference to Face Paste Back to "
                                        "put the generated 512 image (or every video frame) back exactly."),
                io.Float.Output(display_name="fps",
                                tooltip="Frame rate of the driving frames used (driving_fps, or the source rate when "
                                        "it is 0): connect it to Frames To Video."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, toolkit, reference, driving, trans_ratio, crop_reference, on_missing, fps=0.0,
                driving_fps=8.0) -> io.NodeOutput:
        from ..motion.hellomeme.conditions import hellomeme_conditions, resample_indices

        rt = node_runtime(cls)
        picked = resample_indices(int(driving.shape[0]), float(fps), float(driving_fps))  # fails before any work
        with rt.progress(len(picked) + 1, desc="HelloMeme conditions") as bar:
            done = {"n": 0}

            def step(stage, value, total):
                if stage == "landmarks" and value > done["n"]:
                    bar.update(value - done["n"])
                    done["n"] = value

            cond = hellomeme_conditions(reference[:1], driving, expression=toolkit["expression"],
                                        trans_ratio=trans_ratio, crop_reference=crop_reference,
                                        on_missing=on_missing, head_pose=toolkit["head_pose"],
                                        toolkit=toolkit["toolkit"], pdfgc_encoder=toolkit["pdfgc"],
                                        download=toolkit["download"], fps=float(fps),
                                        driving_fps=float(driving_fps), progress=step)
        poses = (cond.condition[0].permute(1, 2, 3, 0) + 1) / 2  # (F, H, W, 3) in [0, 1]
        return io.NodeOutput(cond, cond.reference_image, poses.clamp(0, 1), cond.report(),
                             cond.reference_crop_info(), float(cond.fps))


class HelloMemeImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_HelloMemeImage",
            display_name="HelloMeme Image",
            category=CAT_HM,
            description="Re-poses the reference portrait with the head pose and expression of one driving frame.",
            inputs=_sampler_inputs() + [
                io.Int.Input("driving_frame", default=0, min=0, max=100000,
                             tooltip="Which driving frame gives the pose and expression."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The generated portrait."),
                     io.Latent.Output(display_name="latent", tooltip="Its latent (ComfyUI convention, unscaled).")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, width=None, height=None):  # named: only these skip the built-in range checks
        return check_size(width, height)

    @classmethod
    def execute(cls, hellomeme, conditions, positive, negative, seed, steps, cfg, scheduler, width, height,
                size_correct, driving_frame, speed=None) -> io.NodeOutput:
        from ..sk_attention.pipeline_image import generate_image

        _checked_size(width, height)
        if driving_frame >= conditions.num_frames:
            raise ValueError(f"driving_frame {driving_frame} is past the {conditions.num_frames} driving frames")
        models = hellomeme["models"]
        pos, neg = _text(models, positive, negative)
        prepared = models, ref, controls, ref_controls = _prepare(hellomeme, conditions, width, height)
        from .preflight import check_hellomeme  # refuses a run that cannot fit, before any work

        check_hellomeme(prepared, node_runtime(cls), False, steps=steps,
                        guidance_scale=cfg, prompt=pos, negative=neg, scheduler=_scheduler(scheduler),
                        frame=driving_frame, size_correct=size_correct, speed=speed)
        result = generate_image(models, node_runtime(cls), ref, pos, controls,
                                negative_prompt_embeds=neg, reference_controls=ref_controls,
                                steps=steps, guidance_scale=cfg, noise=seed, scheduler=_scheduler(scheduler),
                                frame=driving_frame, size_correct=size_correct, speed=speed)
        return io.NodeOutput(result.image, {"samples": result.latents})


class HelloMemeVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_HelloMemeVideo",
            display_name="HelloMeme Video",
            category=CAT_HM,
            description="Animates the reference portrait with every driving frame (hierarchical 12-frame windows with "
                        "keyframe anchors). Memory depends on the window, not on the video length; frames are "
                        "decoded as they are final.",
            inputs=_sampler_inputs() + [
                output_input(),
                CropInfo.Input("crop_info", optional=True,
                               tooltip="With output 'video file': the crop_info of HelloMeme Driving Conditions; "
                                       "with 'original' connected, every frame is pasted back into the full "
                                       "portrait before it is encoded (Face Paste Back's defaults: feather 0.1 of "
                                       "the box, rounded rectangle). Not used with output 'frames' (use Face Paste "
                                       "Back there)."),
                io.Image.Input("original", optional=True,
                               tooltip="With output 'video file' and crop_info: the whole reference portrait, "
                                       "which the video shows with the animated face."),
                io.Audio.Input("audio", optional=True,
                               tooltip="With output 'video file': the soundtrack (e.g. the driving video's audio "
                                       "from Load Video (Frames)), fitted to the video's length."),
                resume_input(),
            ],
            outputs=[io.Image.Output(display_name="frames",
                                     tooltip="One generated frame per driving frame (every frame in memory)."
                                             + PREVIEW_NOTE),
                     io.Video.Output(display_name="video",
                                     tooltip="With output 'video file': the mp4 written frame by frame as the frames "
                                             "are final (pasted back when crop_info and original are connected, "
                                             "with the audio), at the conditions' fps, for Save Video. With output "
                                             "'frames': the frames with the audio as a VIDEO (use Face Paste Back "
                                             "and Frames To Video for the pasted-back video).")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, width=None, height=None):  # named: only these skip the built-in range checks
        return check_size(width, height)

    @classmethod
    def execute(cls, hellomeme, conditions, positive, negative, seed, steps, cfg, scheduler, width, height,
                size_correct, output="frames", crop_info=None, original=None, audio=None,
                speed=None, resume=None) -> io.NodeOutput:
        import torch
        from comfy_api.v0_0_2 import InputImpl, Types

        from ..media.video import VideoWriter, as_image_batch, frames_to_components
        from ..sk_attention.pipeline_video import generate_video
        from .common import paste_frame_fn, stream_video_path, video_from_file

        from ..sk_attention.loading import VIDEO_VERSIONS

        version = hellomeme["models"].version
        if version not in VIDEO_VERSIONS:
            raise ValueError(f"HelloMeme {version} is an image-only version: load one of "
                             f"{', '.join(VIDEO_VERSIONS)} in mode 'video' for HelloMeme Video")
        if not hellomeme["video"]:
            raise ValueError(f"the HelloMeme Loader was set to mode 'image': set it to 'video' ({version} has a "
                             "video model)")
        _checked_size(width, height)
        streaming = output == "video file"
        paste = paste_frame_fn(crop_info, original) if streaming else None  # checked before any work
        pos, neg = _text(hellomeme["models"], positive, negative)
        prepared = models, ref, controls, _ = _prepare(hellomeme, conditions, width, height)
        fps = float(conditions.fps or 25.0)
        n = conditions.num_frames
        state = {"frames": None, "next": 0, "preview": None}

        def keep(i, img):  # (B, H, W, 3) frame i, in order: into one preallocated batch (frames mode)
            if state["frames"] is None:
                state["frames"] = torch.empty((n * img.shape[0], *img.shape[1:]), dtype=torch.float32)
            b = img.shape[0]
            state["frames"][i * b:(i + 1) * b] = img
            state["next"] += 1

        def encode(writer, i, img):  # frame i, in order: pasted back and encoded, then dropped (video file)
            if i != state["next"]:
                raise RuntimeError(f"HelloMeme frame {i} arrived before frame {state['next']}")
            for crop in img.detach().to("cpu", torch.float32):
                frame = paste(i, crop.numpy()) if paste is not None else crop
                if state["preview"] is None:
                    state["preview"] = as_image_batch(frame).clone()
                writer.write(frame)
            state["next"] += 1

        options = dict(negative_prompt_embeds=neg, steps=steps, guidance_scale=cfg, noise=seed,
                       scheduler=_scheduler(scheduler),
                       size_correct=size_correct, speed=speed)
        from .preflight import check_hellomeme  # refuses a run that cannot fit, before any work

        from ..sk_attention.preflight import apply_picked

        est = check_hellomeme(prepared, node_runtime(cls), True, output=output,
                              steps=steps, guidance_scale=cfg, prompt=pos, negative=neg,
                              scheduler=_scheduler(scheduler), size_correct=size_correct, speed=speed)
        apply_picked(est, controls, options)  # smaller decode batch / stores when the defaults would not fit
        from ..sk_attention.resume import hellomeme_job

        options["resume"] = hellomeme_job(resume_options(resume), models, conditions.drive_params(), ref, pos, neg,
                                          steps, cfg, seed, _scheduler(scheduler), width, height, size_correct, speed)
        if streaming:
            with VideoWriter(stream_video_path("hellomeme"), fps, audio=audio) as writer:
                generate_video(models, node_runtime(cls), ref, pos, controls,
                               on_frame=lambda i, img: encode(writer, i, img), **options)
            return io.NodeOutput(state["preview"], video_from_file(writer.path))
        generate_video(models, node_runtime(cls), ref, pos, controls, on_frame=keep, **options)
        if state["next"] != n:
            raise RuntimeError(f"HelloMeme produced {state['next']} of {n} frames")
        frames = state["frames"]
        video = InputImpl.VideoFromComponents(Types.VideoComponents(
            **frames_to_components(frames, fps, audio=audio, inplace=True)))
        return io.NodeOutput(frames, video)


NODES = [HelloMemeLoader, HelloMemeToolkit, HelloMemeConditions, HelloMemeImage, HelloMemeVideo]
