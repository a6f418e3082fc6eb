"""HunyuanPortrait nodes: loader, driving conditions (cached apart from sampling), sampler with paste-back."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from .common import CATEGORY, DTYPES, PREFIX, PREVIEW_NOTE, CropInfo, node_runtime, output_input
from .identity_guard import active_guard, guard_input
from .resume import resume_input, resume_options
from .speed import speed_input

CAT_HP = f"{CATEGORY}/HunyuanPortrait"
Models = io.Custom("PA_HUNYUAN_PORTRAIT")
Conditions = io.Custom("PA_HP_CONDITIONS")
OFFICIAL_SEED = 72580  # the official config's seed


class HunyuanPortraitLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_HunyuanPortraitLoader",
            display_name="HunyuanPortrait Loader",
            category=CAT_HP,
            description="Loads the official HunyuanPortrait files (tencent/HunyuanPortrait hyportrait/*.pth, the "
                        "SVD-xt VAE, YOLOv5m-face and ArcFace) from ComfyUI's models folder under ComfyUI's model "
                        "management. Files you already have under other packs' names are found first; missing "
                        "files are listed with their source and destination, or downloaded when 'download' is on.",
            inputs=[
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="Precision of the UNet, VAE, DINOv2 and pose guider. auto: fp16 on a GPU (as "
                                       "released), fp32 on the CPU. The motion networks always run in fp32, the VAE "
                                       "encoder in fp32, as in the original."),
                io.Boolean.Input("arcface", default=True,
                                 tooltip="Load ArcFace (arcface.onnx): its identity embedding conditions the "
                                         "appearance encoder (use_arcface, on in the original) and gives the "
                                         "sampler's identity score. Off: a zero embedding, no identity score."),
                io.Boolean.Input("download", default=True,
                                 tooltip="Download missing files from the Hugging Face Hub into ComfyUI's models "
                                         "folder (7.5 GB; the SVD-xt VAE repository is gated: accept its license and "
                                         "log in with an HF token). Off: only report what is missing and where."),
            ],
            outputs=[Models.Output(display_name="hunyuan_portrait", tooltip="The loaded HunyuanPortrait models."),
                     io.String.Output(display_name="report",
                                      tooltip="Which file each model came from when found under another name or in a "
                                              "cache, and what was converted or dropped while loading.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, dtype, arcface, download) -> io.NodeOutput:
        from ..hunyuan_portrait.bundle import load_bundle

        bundle = load_bundle(node_runtime(cls), dtype=dtype, download=download, arcface=arcface)
        return io.NodeOutput(bundle, "\n".join(bundle.notes) or "all files at their canonical places, loaded as is")


class HunyuanPortraitConditions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ..hunyuan_portrait.conditions import DEFAULT_SIZE, ON_MISSING, SIZE_MULTIPLE

        return io.Schema(
            node_id=f"{PREFIX}_HunyuanPortraitConditions",
            display_name="HunyuanPortrait Driving Conditions",
            category=CAT_HP,
            description="Crops the reference as the original (a square of 3x the face), and turns the driving "
                        "frames into implicit motion tokens (expression, head pose, intensity) and the reference into "
                        "appearance tokens (DINOv2 + ArcFace). Cached apart from sampling: trying seeds or guidance "
                        "does not re-run the face and motion models.",
            inputs=[
                Models.Input("hunyuan_portrait", tooltip="Models from HunyuanPortrait Loader."),
                io.Image.Input("reference", tooltip="The portrait to animate (first image), whole: the node crops "
                                                    "it and the sampler pastes the result back into it."),
                io.Image.Input("driving", tooltip="Driving frames (a video as an IMAGE batch). Every frame becomes "
                                                  "one output frame; HunyuanPortrait was trained on video, so a "
                                                  "single repeated image drives poorly."),
                io.Int.Input("size", default=DEFAULT_SIZE, min=SIZE_MULTIPLE, max=1024, step=SIZE_MULTIPLE,
                             tooltip="Side of the square crop that is animated (the model was trained at 512)."),
                io.Int.Input("intensity_chunk", default=25, min=1, max=200,
                             tooltip="Driving frames per head/expression intensity estimate (25 in the original, "
                                     "equal to its sampling window)."),
                io.Combo.Input("on_missing", options=list(ON_MISSING), default="error",
                               tooltip="Driving frames without a face: stop naming them (the original crashes), or "
                                       "reuse the nearest frame's face (reported)."),
                io.Float.Input("fps", default=0.0, min=0.0, max=1000.0, step=0.01, optional=True,
                               tooltip="Frame rate of the driving frames (connect Load Video (Frames)'s fps): the "
                                       "output video plays at this rate, one frame per driving frame. 0: 25."),
                io.Audio.Input("audio", optional=True,
                               tooltip="The driving video's audio (Load Video (Frames)'s audio), muxed into the "
                                       "sampler's video output, trimmed to its length."),
            ],
            outputs=[
                Conditions.Output(display_name="conditions", tooltip="Appearance and motion tokens for the sampler."),
                io.Image.Output(display_name="reference_crop", tooltip="The square crop that is animated."),
                CropInfo.Output(display_name="crop_info",
                                tooltip="Where reference_crop came from in the reference, for Face Paste Back "
                                        "(other mask shapes than the sampler's released soft rectangle)."),
                io.String.Output(display_name="report", tooltip="Frames, crop box, intensity ids, filled frames."),
                io.Float.Output(display_name="fps", tooltip="The driving frame rate used for the output (25 if "
                                                            "unknown)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, hunyuan_portrait, reference, driving, size, intensity_chunk, on_missing, fps=0.0,
                audio=None) -> io.NodeOutput:
        from ..hunyuan_portrait.conditions import portrait_conditions

        rt = node_runtime(cls)
        with rt.progress(2 * int(driving.shape[0]) + 2, desc="HunyuanPortrait conditions") as bar:
            cond = portrait_conditions(hunyuan_portrait, reference, driving, size=size,
                                       intensity_chunk=intensity_chunk, on_missing=on_missing, fps=float(fps or 0.0),
                                       audio=audio, progress=bar.update)
        report = cond.report()
        return io.NodeOutput(cond, cond.reference_image(), cond.crop_info(), report, float(cond.fps or 25.0),
                             ui={"text": [report]})


class HunyuanPortraitSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_HunyuanPortraitSampler",
            display_name="HunyuanPortrait Sampler",
            category=CAT_HP,
            description="Animates the reference crop with the driving motion (Euler v-prediction, three-branch "
                        "guidance, overlapping windows over the whole padded sequence with a per-step shift), then "
                        "pastes every frame back into the full reference. The sequence stays in host memory and one "
                        "window at a time is on the GPU, so GPU memory does not grow with the video length.",
            inputs=[
                Models.Input("hunyuan_portrait", tooltip="Models from HunyuanPortrait Loader."),
                Conditions.Input("conditions", tooltip="From HunyuanPortrait Driving Conditions."),
                io.Int.Input("seed", default=OFFICIAL_SEED, min=0, max=2**63 - 1, control_after_generate=True,
                             tooltip="Seed of the initial noise (drawn on the CPU: the same video on every GPU)."),
                io.Int.Input("steps", default=25, min=1, max=200, tooltip="Euler steps (25 in the original)."),
                io.Float.Input("appearance_guidance", default=2.0, min=0.0, max=10.0, step=0.05,
                               tooltip="How strongly the reference's appearance is followed (2.0 in the original "
                                       "config, 2.5 in its web demo)."),
                io.Float.Input("motion_guidance", default=2.0, min=0.0, max=10.0, step=0.05,
                               tooltip="How strongly the driving motion is followed (2.0 in the original config)."),
                io.Int.Input("window", default=25, min=2, max=64,
                             tooltip="Frames denoised together (25, as trained). Larger windows need more GPU "
                                     "memory; the length of the video does not."),
                io.Int.Input("overlap", default=3, min=0, max=63,
                             tooltip="Frames shared by neighbouring windows (3 in the original); less than window."),
                io.Int.Input("shift", default=3, min=0, max=63,
                             tooltip="How far the window grid moves after each step so seams do not stay in place "
                                     "(3 in the original)."),
                io.Int.Input("pad_frames", default=15, min=0, max=64,
                             tooltip="Frames added before and after the video with the motion faded in and out, "
                                     "trimmed after decoding (15 in the original)."),
                io.Float.Input("fps_id", default=12.5, min=1.0, max=60.0, step=0.5,
                               tooltip="The frame-rate conditioning the model was trained with (12.5, whatever the "
                                       "driving rate). Not the output frame rate."),
                io.Float.Input("motion_bucket", default=0.0, min=0.0, max=255.0, step=1.0,
                               tooltip="SVD motion bucket conditioning (0 in the original; other values were not "
                                       "trained for this model)."),
                io.Float.Input("noise_aug", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Noise added to the reference before encoding its conditioning latents (0 in "
                                       "the original)."),
                io.Int.Input("decode_chunk", default=8, min=0, max=64,
                             tooltip="Frames the temporal VAE decodes together (8 in the original). Lower it if "
                                     "decoding runs out of GPU memory; results change slightly at chunk edges. "
                                     "0 = the largest that fits the free memory (Preflight's estimate)."),
                io.Float.Input("paste_border", default=0.1, min=0.0, max=0.49, step=0.01,
                               tooltip="Width of the soft edge when pasting back, as a fraction of the crop side "
                                       "(0.1 as released)."),
                io.Boolean.Input("identity_score", default=True,
                                 tooltip="Measure the ArcFace similarity of every generated frame to the reference "
                                         "(needs ArcFace on the loader): identity outputs."),
                output_input(),
                speed_input(),
                guard_input(),
                resume_input(),
            ],
            outputs=[
                io.Image.Output(display_name="frames", tooltip="The generated square crops, one per driving frame "
                                                               "(all frames in memory)." + PREVIEW_NOTE),
                io.Image.Output(display_name="full_frames",
                                tooltip="The reference at full size with each generated frame pasted back (all "
                                        "frames in memory: long videos of large images need a lot of RAM; use "
                                        "output 'video file' for those)." + PREVIEW_NOTE),
                io.Video.Output(display_name="video",
                                tooltip="full_frames with the driving audio at the driving frame rate, for Save "
                                        "Video. With output 'video file': the mp4 written chunk by chunk as the "
                                        "frames are decoded and pasted back, not held in memory."),
                io.Float.Output(display_name="fps", tooltip="Frame rate of the output."),
                io.Float.Output(display_name="identity",
                                tooltip="Mean ArcFace similarity of the generated faces to the reference (NaN when "
                                        "not measured)."),
                io.String.Output(display_name="identity_report",
                                 tooltip="Identity similarity per sampling window (frame ranges), as text; JSON in "
                                         "the node's UI output."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, window=None, overlap=None):  # named: only these skip the built-in range checks
        if window is not None and overlap is not None and overlap >= window:
            return f"overlap ({overlap}) must be smaller than window ({window})"
        return True

    @classmethod
    def execute(cls, hunyuan_portrait, conditions, seed, steps, appearance_guidance, motion_guidance, window,
                overlap, shift, pad_frames, fps_id, motion_bucket, noise_aug, decode_chunk, paste_border,
                identity_score, output="frames", speed=None, identity_guard=None, resume=None) -> io.NodeOutput:
        import json
        import math

        import numpy as np
        import torch
        from comfy_api.v0_0_2 import InputImpl, Types

        from ..hunyuan_portrait.animate import (IdentityReport, animate, identity_scores, iter_animate, iter_pasted,
                                                pasted_frames, settings_for)
        from ..media.video import VideoWriter, frames_to_components
        from ..metrics.identity_guard import guard_portrait, report_windows, require_portrait_scores
        from .common import stream_video_path, video_from_file

        settings = settings_for(
            conditions, num_inference_steps=steps, n_sample_frames=window, overlap=overlap, shift_offset=shift,
            pad_frames=pad_frames, fps=fps_id, motion_bucket_id=motion_bucket, noise_aug_strength=noise_aug,
            decode_chunk_size=decode_chunk or 8, min_appearance_guidance_scale=appearance_guidance,
            max_appearance_guidance_scale=appearance_guidance, min_motion_guidance_scale=motion_guidance,
            max_motion_guidance_scale=motion_guidance, border_ratio=paste_border)
        rt = node_runtime(cls)
        settings = preflight_settings(hunyuan_portrait, conditions, settings, rt, auto_decode=decode_chunk == 0,
                                      full=output != "video file", speed=speed)  # refuses a run that cannot fit
        fps = float(conditions.fps or 25.0)
        guard, guarded = active_guard(identity_guard), None
        if guard is not None:
            require_portrait_scores(hunyuan_portrait, conditions)  # before any sampling
        if output == "video file":
            # each decoded chunk: pasted back (uint8, as released) and encoded, scored, then dropped
            scores: list = []
            measured = identity_score or guard is not None
            preview = full_preview = None
            with VideoWriter(stream_video_path("hunyuan_portrait"), fps, audio=conditions.audio) as writer:
                for crops in iter_animate(hunyuan_portrait, conditions, settings, seed, runtime=rt, speed=speed,
                                          resume=resume_options(resume)):
                    for frame in iter_pasted(conditions, crops, paste_border):
                        if full_preview is None:
                            full_preview = torch.from_numpy(frame.astype(np.float32) / 255.0)[None]
                        writer.write(frame)
                    if preview is None:
                        preview = crops[:1].clone()
                    if measured:
                        part = identity_scores(hunyuan_portrait, conditions, crops, window)
                        measured = part is not None
                        scores.extend(part.per_frame if part is not None else [])
            report = IdentityReport(per_frame=scores, window=window) if measured else None
            frames, full, video = preview, full_preview, video_from_file(writer.path)
            if guard is not None:
                guarded = report_windows(guard, scores, window, note="re-anchoring needs output 'frames' (the video "
                                         "file is written as the frames are decoded): windows reported only")
        else:
            run_resume, guard_done = resume_options(resume), None
            if guard is not None:  # the run's and the retries' entries kept until the guard is done
                from ..hunyuan_portrait.resume import guard_scope

                run_resume, guard_done = guard_scope(run_resume, hunyuan_portrait, conditions, settings, seed, speed)
            frames = animate(hunyuan_portrait, conditions, settings, seed, runtime=rt, speed=speed, resume=run_resume)
            if guard is not None:  # scores every frame, re-anchors failing windows in place
                frames, report, guarded = guard_portrait(guard, hunyuan_portrait, conditions, settings, seed, frames,
                                                         runtime=rt, speed=speed, resume=run_resume)
                guard_done()
            n = frames.shape[0]
            with rt.progress(2 * n if identity_score and guard is None else n,
                             desc="HunyuanPortrait paste-back") as bar:
                full = pasted_frames(conditions, frames, paste_border, progress=bar.update)
                if guard is None:
                    report = identity_scores(hunyuan_portrait, conditions, frames, window,
                                             progress=bar.update) if identity_score else None
            video = InputImpl.VideoFromComponents(Types.VideoComponents(
                **frames_to_components(full, fps, audio=conditions.audio, inplace=True)))
        if report is None:
            mean, text, ui = math.nan, "identity not measured (ArcFace off on the loader, or identity_score off)", {}
        else:
            mean, text = report.mean, report.summary()
            ui = {"text": [json.dumps(report.to_dict())]}
        if guarded is not None:  # the guard's windows and actions after the scores
            text += "\n" + guarded.summary()
            ui = {"text": [json.dumps({**report.to_dict(), **guarded.to_dict()})]}
        return io.NodeOutput(frames, full, video, fps, mean, text, ui=ui or None)


def preflight_settings(bundle, conditions, settings, rt, auto_decode: bool, full: bool, speed=None):
    """The sampler's settings after the preflight check (decode_chunk 0: the largest that fits)."""
    from ..hunyuan_portrait import preflight as hp
    from ..runtime.preflight import advisory

    size = tuple(conditions.original.shape[:2]) if full else None
    if auto_decode:  # without an estimate: the settings' chunk (the original's 8)
        settings = advisory("HunyuanPortrait", lambda: hp.auto_decode_chunk(
            bundle, conditions.num_frames, settings, conditions, rt, full_size=size, speed=speed)[0], settings)
    advisory("HunyuanPortrait", lambda: hp.ensure(bundle, conditions, settings, rt, full_size=size, speed=speed))
    return settings


NODES = [HunyuanPortraitLoader, HunyuanPortraitConditions, HunyuanPortraitSampler]
