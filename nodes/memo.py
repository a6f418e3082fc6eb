"""MEMO nodes: loader, audio conditioner (cached per audio), talking-portrait sampler."""
from __future__ import annotations

from comfy_api.latest import io

from ..audio.emotion import EMOTION_CHOICES
from .common import CATEGORY, DTYPES, PREFIX, node_runtime

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
                               tooltip="Precision of the diffusion networks and the VAE. auto follows ComfyUI "
                                       "(bf16/fp16 on a GPU, fp32 on the CPU); the original runs in bf16."),
                io.Boolean.Input("emotion_model", default=True,
                                 tooltip="Load emotion2vec+ and MEMO's emotion classifier for automatic emotion per "
                                         "clip. Off: 'auto' emotion uses neutral (a manual emotion still works)."),
                io.Boolean.Input("vocal_separation", default=False,
                                 tooltip="Load the vocal separator (Kim_Vocal_2, MDX-Net) so the audio node can "
                                         "remove music and noise before lip sync."),
                io.Boolean.Input("identity", default=True,
                                 tooltip="Load the insightface identity models (SCRFD detector + ArcFace R100) "
                                         "whose face embedding conditions MEMO."),
                io.Boolean.Input("download", default=False,
                                 tooltip="Download missing files from the Hugging Face Hub into ComfyUI's models "
                                         "folder. Off: report what is missing and where it goes."),
            ],
            outputs=[MemoModels.Output(display_name="memo", tooltip="The loaded MEMO models.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, dtype, emotion_model, vocal_separation, identity, download) -> io.NodeOutput:
        from ..memo.pipeline import load_memo_bundle

        return io.NodeOutput(load_memo_bundle(node_runtime(cls), dtype=dtype, download=download,
                                              emotion_model=emotion_model, vocal_separation=vocal_separation,
                                              identity=identity))


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
                             tooltip="Frames generated per clip (MEMO: 16). The audio is padded to whole clips."),
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
                io.Int.Input("resolution", default=512, min=64, max=2048, step=8,
                             tooltip="Side of the generated square frames (MEMO was trained at 512)."),
                io.Combo.Input("on_missing_face", options=["error", "uncond"], default="error",
                               tooltip="No face found in the reference: stop with an error, or continue without "
                                       "an identity embedding (uncond)."),
                io.Boolean.Input("faithful", default=False,
                                 tooltip="Reproduce the original's CFG batching quirks bit for bit. Off (default): "
                                         "each CFG half gets its own reference and identity features."),
            ],
            outputs=[
                io.Image.Output(display_name="frames", tooltip="Generated frames, as long as the speech."),
                io.Audio.Output(display_name="audio", tooltip="The speech as used for lip sync (16 kHz mono), "
                                                              "exactly as long as the frames."),
                io.Video.Output(display_name="video", tooltip="Frames + audio at the conditioner's fps, for "
                                                              "SaveVideo."),
                io.Float.Output(display_name="fps", tooltip="Frame rate of the frames."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, memo, reference, conditions, seed, steps, cfg, past_frames, resolution, on_missing_face,
                faithful) -> io.NodeOutput:
        import torch

        from ..media.audio import prepare_audio
        from ..media.video import frames_to_components
        from ..memo.pipeline import MemoSettings, face_embedding, talking_frames
        from comfy_api.latest import InputImpl, Types

        if reference.shape[0] < 1:
            raise ValueError("input 'reference' is an empty IMAGE batch: connect a portrait image")
        face = face_embedding(memo, reference, on_missing_face=on_missing_face, input_name="reference")
        settings = MemoSettings(steps=steps, guidance_scale=cfg, num_past_frames=past_frames, seed=seed,
                                faithful=faithful, width=resolution, height=resolution)
        frames = torch.cat(list(talking_frames(memo, reference, conditions, face, settings,
                                               runtime=node_runtime(cls))))
        audio = prepare_audio(conditions.audio, sample_rate=conditions.audio["sample_rate"], mono=False,
                              frames=frames.shape[0], fps=conditions.fps)
        video = InputImpl.VideoFromComponents(Types.VideoComponents(
            **frames_to_components(frames, conditions.fps, audio=audio)))
        return io.NodeOutput(frames, audio, video, float(conditions.fps))


NODES = [MemoLoader, MemoAudioConditioner, MemoSampler]
