"""MEMO nodes: loader, audio conditioner (cached per audio), talking-portrait sampler."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..audio.emotion import EMOTION_CHOICES
from ..memo.pipeline import DEFAULT_RESOLUTION, RESOLUTION_MAX, RESOLUTION_MIN, RESOLUTION_STEP  # light: no models
from .common import CATEGORY, DTYPES, PREFIX, PREVIEW_NOTE, CropInfo, node_runtime, output_input
from .identity_guard import active_guard, guard_input
from .resume import resume_input, resume_options
from .speed import speed_input

CAT_MEMO = f"{CATEGORY}/MEMO"
MemoModels = io.Custom("PA_MEMO_MODELS")
MemoAudio = io.Custom("PA_MEMO_AUDIO")


class MemoLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_MemoLoader",
            display_name="MEMO Loader",
            category=CAT_MEMO,
            description="Loads the official MEMO models (memoavatar/memo with sd-vae-ft-mse, wav2vec2-base-960h, "
                        "emotion2vec+ and the insightface identity models) from ComfyUI's models folder, under "
                        "ComfyUI's model management. Missing files are listed with their source and destination, "
                        "or downloaded when 'download' is on.",
            inputs=[
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="Precision of the diffusion networks and the VAE. auto: bf16 where the GPU "
                                       "supports it, else fp32 (MEMO was released in bf16/fp32). fp16 only when "
                                       "picked here, with a warning: MEMO's activations can overflow in fp16."),
                io.Boolean.Input("emotion_model", default=True,
                                 tooltip="Load emotion2vec+ and MEMO's emotion classifier for automatic emotion per "
                                         "clip. Off: 'auto' emotion uses neutral (a manual emotion still works)."),
                io.Boolean.Input("vocal_separation", default=False,
                                 tooltip="Load the vocal separator (Kim_Vocal_2, MDX-Net) so the audio node can "
                                         "remove music and noise before lip sync."),
                io.Boolean.Input("identity", default=True,
                                 tooltip="Load the insightface identity models (SCRFD detector + ArcFace R100) "
                                         "whose face embedding conditions MEMO."),
                io.Boolean.Input("download", default=True,
                                 tooltip="Download missing files from the Hugging Face Hub into ComfyUI's models "
                                         "folder (files you already have, under the names other packs use, are found "
                                         "first). Off: only report what is missing and where it goes."),
            ],
            outputs=[MemoModels.Output(display_name="memo", tooltip="The loaded MEMO models."),
                     io.String.Output(display_name="report",
                                      tooltip="Which file each model came from when it was found under another name "
                                              "or in a cache, what was converted or dropped while loading the "
                                              "released files, and what was not loaded.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, dtype, emotion_model, vocal_separation, identity, download) -> io.NodeOutput:
        from ..memo.pipeline import load_memo_bundle

        bundle = load_memo_bundle(node_runtime(cls), dtype=dtype, download=download, emotion_model=emotion_model,
                                  vocal_separation=vocal_separation, identity=identity)
        return io.NodeOutput(bundle, "\n".join(bundle.notes) or "all files at their canonical places, loaded as is")


class MemoAudioConditioner(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_MemoAudio",
            display_name="MEMO Audio Conditioner",
            category=CAT_MEMO,
            description="Turns speech into MEMO's audio conditions: 16 kHz mono, optional vocal separation, wav2vec2 "
                        "features for every video frame (padded to whole clips) and one emotion per clip. Cached: "
                        "changing sampler settings does not re-encode the audio.",
            inputs=[
                MemoModels.Input("memo", tooltip="Models from MEMO Loader."),
                io.Audio.Input("audio", tooltip="Speech to lip-sync (any sample rate, mono or stereo)."),
                io.Float.Input("fps", default=30.0, min=1.0, max=120.0, step=0.01,
                               tooltip="Frame rate of the generated video; the frame count follows from the audio "
                                       "length and this rate. MEMO was trained at 30 fps."),
                io.Int.Input("clip_length", default=16, min=1, max=64,
                             tooltip="Frames generated per clip (MEMO: 16). The audio is padded to whole clips. "
                                     "At most the loaded model's temporal position table (checked before any "
                                     "audio is encoded)."),
                io.Combo.Input("emotion", options=list(EMOTION_CHOICES), default="auto",
                               tooltip="auto: detect the emotion of every clip from the speech (needs the emotion "
                                       "model). Or one emotion for the whole video."),
                io.Boolean.Input("separate_vocals", default=False,
                                 tooltip="Remove music/noise first (needs 'vocal_separation' on the loader)."),
            ],
            outputs=[
                MemoAudio.Output(display_name="conditions", tooltip="Audio features and emotions for MEMO Sampler."),
                io.Int.Output(display_name="frame_count", tooltip="Frames the speech covers at this fps."),
                io.String.Output(display_name="summary", tooltip="Frames, clips, emotion per clip and notes."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, memo, audio, fps, clip_length, emotion, separate_vocals) -> io.NodeOutput:
        from ..memo.pipeline import condition

        cond = condition(memo, audio, fps=fps, clip_length=clip_length, emotion=emotion,
                         separate_vocals=separate_vocals, runtime=node_runtime(cls))
        summary = cond.summary()
        return io.NodeOutput(cond, cond.frames_with_audio, summary, ui={"text": [summary]})


class MemoSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_MemoSampler",
            display_name="MEMO Talking Portrait",
            category=CAT_MEMO,
            description="Animates a portrait with speech, clip by clip (flow-matching Euler with CFG, past frames and "
                        "the temporal memory carried across clips). GPU memory does not grow with the audio length. "
                        "Feed it a square face crop (Face Crop node) and paste the result back with Face Paste Back.",
            inputs=[
                MemoModels.Input("memo", tooltip="Models from MEMO Loader."),
                io.Image.Input("reference", tooltip="The portrait to animate (first image of the batch; a square "
                                                     "face crop works best)."),
                MemoAudio.Input("conditions", tooltip="From MEMO Audio Conditioner."),
                io.Int.Input("seed", default=42, min=0, max=2**63 - 1, control_after_generate=True,
                             tooltip="Seed of the initial noise of every clip."),
                io.Int.Input("steps", default=20, min=1, max=200, tooltip="Flow-matching Euler steps per clip."),
                io.Float.Input("cfg", default=3.5, min=1.0, max=20.0, step=0.1,
                               tooltip="Guidance scale (one scale for identity, audio, emotion and reference)."),
                io.Int.Input("past_frames", default=16, min=1, max=64,
                             tooltip="Frames of the previous clip (or the reference, for the first clip) that "
                                     "condition the next clip."),
                io.Int.Input("resolution", default=DEFAULT_RESOLUTION, min=RESOLUTION_MIN, max=RESOLUTION_MAX,
                             step=RESOLUTION_STEP,
                             tooltip=f"Side of the generated square frames: a multiple of {RESOLUTION_STEP} (the VAE's "
                                     f"factor) from {RESOLUTION_MIN} to {RESOLUTION_MAX}. MEMO was trained at 512."),
                io.Combo.Input("on_missing_face", options=["error", "uncond"], default="error",
                               tooltip="No face found in the reference: stop with an error, or continue without "
                                       "an identity embedding (uncond)."),
                io.Boolean.Input("faithful", default=True,
                                 tooltip="On (default, as released): the original's CFG batching, bit for bit, as "
                                         "the published results were made. Off: each CFG half gets its own "
                                         "reference and identity features, as in training (a corrected variant)."),
                output_input(),
                speed_input(),
                CropInfo.Input("crop_info", optional=True,
                               tooltip="With output 'video file': the crop_info of the Face Crop that made "
                                       "'reference'; with 'original' connected, every frame is pasted back into the "
                                       "full portrait before it is encoded (Face Paste Back's defaults: feather 0.1 "
                                       "of the box, rounded rectangle). Not used with output 'frames' (use Face "
                                       "Paste Back there)."),
                io.Image.Input("original", optional=True,
                               tooltip="With output 'video file' and crop_info: the image that went into Face Crop "
                                       "(the full portrait), which the video shows with the animated face."),
                guard_input(),
                resume_input(),
            ],
            outputs=[
                io.Image.Output(display_name="frames",
                                tooltip="Generated frames, as long as the speech (every frame in memory)."
                                        + PREVIEW_NOTE),
                io.Audio.Output(display_name="audio", tooltip="The speech as used for lip sync (16 kHz mono), "
                                                              "exactly as long as the frames."),
                io.Video.Output(display_name="video",
                                tooltip="Frames + audio at the conditioner's fps, for Save Video. With output "
                                        "'video file': the mp4 written clip by clip (pasted back into 'original' "
                                        "when crop_info and original are connected), not held in memory."),
                io.Float.Output(display_name="fps", tooltip="Frame rate of the frames."),
                io.String.Output(display_name="identity_report",
                                 tooltip="With Identity Guard connected: every clip's ArcFace similarity to the "
                                         "reference (frame range, before/after, action taken), as text; JSON in the "
                                         "node's UI output. Empty without it."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, resolution=None):
        # Naming only `resolution` keeps ComfyUI's own min/max/combo checks for every other input (a **kwargs
        # signature would switch them all off); a linked resolution arrives as None and is checked at run time.
        from ..memo.pipeline import resolution_problem

        return resolution_problem(resolution) or True

    @classmethod
    def execute(cls, memo, reference, conditions, seed, steps, cfg, past_frames, resolution, on_missing_face,
                faithful, output="frames", crop_info=None, original=None, speed=None,
                identity_guard=None, resume=None) -> io.NodeOutput:
        from ..media.audio import prepare_audio
        from ..media.video import fill_frames, frames_to_components, stream_to_video
        from ..memo.pipeline import MemoSettings, check_settings, face_embedding, talking_frames
        from ..metrics.identity_guard import memo_clip_guard
        from comfy_api.v0_0_2 import InputImpl, Types

        from .common import paste_frame_fn, stream_video_path, video_from_file

        if reference.shape[0] < 1:
            raise ValueError("input 'reference' is an empty IMAGE batch: connect a portrait image")
        settings = MemoSettings(steps=steps, guidance_scale=cfg, num_past_frames=past_frames, seed=seed,
                                faithful=faithful, width=resolution, height=resolution)
        check_settings(memo, conditions, settings)  # clip length and size, before the face models run
        paste = paste_frame_fn(crop_info, original) if output == "video file" else None  # checked before sampling
        from ..memo.preflight import ensure  # refuses a run that cannot fit, before any work
        from ..runtime.preflight import advisory

        est = advisory("MEMO", lambda: ensure(memo, conditions, settings, node_runtime(cls), output=output,
                                              speed=speed))
        vae_batch = est.picked.get("vae_batch") if est is not None else None  # smaller when the default won't fit
        face = face_embedding(memo, reference, on_missing_face=on_missing_face, input_name="reference")
        count = conditions.frames_with_audio
        audio = prepare_audio(conditions.audio, sample_rate=conditions.audio["sample_rate"], mono=False,
                              frames=count, fps=conditions.fps)
        guard = memo_clip_guard(active_guard(identity_guard), memo, face, settings, conditions.clip_length, count)
        clips = talking_frames(memo, reference, conditions, face, settings, runtime=node_runtime(cls), speed=speed,
                               guard=guard, resume=resume_options(resume), vae_batch=vae_batch)
        if output == "video file":
            path, written, first = stream_to_video(clips, stream_video_path("memo"), conditions.fps, audio=audio,
                                                   frame_fn=paste)
            return _with_report(guard, first, audio, video_from_file(path), float(conditions.fps))
        frames = fill_frames(clips, count)                                              # (N, H, W, 3), one buffer
        video = InputImpl.VideoFromComponents(Types.VideoComponents(
            **frames_to_components(frames, conditions.fps, audio=audio, inplace=True)))
        return _with_report(guard, frames, audio, video, float(conditions.fps))


def _with_report(guard, *outputs) -> io.NodeOutput:
    """The sampler's outputs and the identity guard's report (text output, JSON in the UI; empty without it)."""
    if guard is None:
        return io.NodeOutput(*outputs, "")
    text = guard.report.summary()
    return io.NodeOutput(*outputs, text, ui={"text": [guard.report.json()]})


NODES = [MemoLoader, MemoAudioConditioner, MemoSampler]
