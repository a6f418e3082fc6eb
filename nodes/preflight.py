"""Preflight (Portrait Animation): the peak memory and time of a sampler run, estimated before any work with the
same code the samplers run first (``runtime.preflight`` + each family's ``preflight`` module)."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..runtime import preflight as pf

from .common import CAT_MODELS, PREFIX, node_runtime
from .hellomeme import Conditions as HMConditions, HelloMeme
from .hunyuan_portrait import Conditions as HPConditions, Models as HPModels
from .memo import MemoAudio, MemoModels
from .speed import SpeedOptionsType


def hunyuan_estimate(bundle, conditions, frames, steps, size, window, decode_chunk, output, rt, speed=None):
    """The estimate; decode_chunk 0: with the largest decode chunk that fits (named in its settings)."""
    from ..hunyuan_portrait import preflight as hp
    from ..hunyuan_portrait.pipeline import PortraitSettings

    if conditions is not None:
        frames, size = conditions.num_frames, conditions.size
    s = PortraitSettings(width=size, height=size, num_inference_steps=steps, n_sample_frames=window,
                         overlap=min(PortraitSettings.overlap, window - 1), decode_chunk_size=max(decode_chunk, 1))
    if decode_chunk == 0:
        return hp.auto_decode_chunk(bundle, frames, s, conditions, rt, speed=speed)[1]
    return hp.estimate(bundle, s, frames, conditions, rt, speed=speed)


def memo_estimate(bundle, conditions, frames, steps, size, clip_length, output, rt, speed=None):
    from ..memo import preflight as mp
    from ..memo.pipeline import MemoSettings

    s = MemoSettings(steps=steps, width=size, height=size)
    return _fitted(lambda free: mp.fit(bundle, s, frames, clip_length, conditions, rt, output, free, speed=speed),
                   lambda: mp.estimate(bundle, s, frames, clip_length, conditions, rt, output=output, speed=speed),
                   lambda: pf.free_bytes(rt, [h.module for h in bundle.sampling_models]))


def _fitted(fit, default, free_now):
    """The estimate the sampler would run with (sizes chosen to fit, when they must be); when nothing fits, the
    default's, with the refusal's text in ``refusal``."""
    free = free_now()
    try:
        return fit(free)
    except pf.PreflightError as e:
        from dataclasses import replace

        return replace(default(), free=free, refusal=str(e))     # a copy: estimates are cached


def hellomeme_estimate(hellomeme, conditions, steps, size, output, rt, speed=None):
    from ..sk_attention import preflight as sp
    from ..sk_attention.loading import VIDEO_VERSIONS
    from .hellomeme import _prepare

    if conditions is None:
        raise ValueError("input 'hellomeme_conditions' is not connected: HelloMeme's estimate runs its control "
                         "networks on the driving conditions; connect HelloMeme Driving Conditions")
    models, ref, controls, ref_controls = _prepare(hellomeme, conditions, size, size)
    video = bool(hellomeme["video"]) and models.version in VIDEO_VERSIONS
    extra = {"speed": speed} if video else {"reference_controls": ref_controls, "speed": speed}
    return _fitted(lambda free: sp.ensure(models, controls, ref, rt, video=video, free=free, steps=steps,
                                          output=output, size_correct=True, **extra),
                   lambda: sp.estimate(models, controls, ref, video=video, steps=steps, runtime=rt, output=output,
                                       size_correct=True, **extra),
                   lambda: pf.free_bytes(rt, sp.modules(models)))


def check_hellomeme(prepared, rt, video: bool, output: str = "frames", **options):
    """The HelloMeme samplers' check before any work, on the sampler's own prepared ``(models, reference, controls,
    reference_controls)`` (the trace runs on copies of the control sources, so they keep no fake features)."""
    from ..runtime.preflight import advisory
    from ..sk_attention import preflight as sp

    models, ref, controls, ref_controls = prepared
    if not video and ref_controls is not None:
        options["reference_controls"] = ref_controls
    return advisory("HelloMeme", lambda: sp.ensure(models, controls, ref, rt, video=video, output=output, **options))


class Preflight(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}_Preflight",
            display_name="Preflight (Portrait Animation)",
            category=CAT_MODELS,
            description=("Estimates the peak memory and the time of a HelloMeme, MEMO or HunyuanPortrait run before "
                         "any work, by tracing the real models at the real shapes without computing (no memory is "
                         "taken). The samplers run the same check first and refuse a run that cannot fit; when the "
                         "defaults do not fit they first shrink the sizes that change memory but not the result "
                         "(decode/VAE batches, feature stores), which the report names. Connect one loaded model."),
            inputs=[
                io.Int.Input("frames", default=100, min=1, max=100000,
                             tooltip="Frames to generate (used when no conditions are connected: MEMO and "
                                     "HunyuanPortrait)."),
                io.Int.Input("steps", default=25, min=1, max=200, tooltip="Denoising steps (the time scales with it)."),
                io.Int.Input("size", default=512, min=64, max=2048, step=8,
                             tooltip="Side of the generated square frames (MEMO resolution, HunyuanPortrait crop "
                                     "size when no conditions are connected, HelloMeme width and height)."),
                io.Int.Input("window", default=25, min=2, max=64,
                             tooltip="HunyuanPortrait: frames per sampling window (the sampler's 'window')."),
                io.Int.Input("decode_chunk", default=0, min=0, max=64,
                             tooltip="HunyuanPortrait: frames per VAE decode call; 0 = the largest that fits the "
                                     "free memory (shown in the report)."),
                io.Int.Input("clip_length", default=16, min=1, max=64,
                             tooltip="MEMO: frames per clip (used when no conditions are connected)."),
                io.Combo.Input("output", options=["frames", "video file"], default="frames",
                               tooltip="The sampler's output: 'frames' keeps every frame on the host too."),
                HelloMeme.Input("hellomeme", optional=True, tooltip="From HelloMeme Loader."),
                HMConditions.Input("hellomeme_conditions", optional=True,
                                   tooltip="From HelloMeme Driving Conditions (needed with hellomeme)."),
                MemoModels.Input("memo", optional=True, tooltip="From MEMO Loader."),
                MemoAudio.Input("memo_conditions", optional=True,
                                tooltip="From MEMO Audio Conditioner (optional: frames and clip_length otherwise)."),
                HPModels.Input("hunyuan_portrait", optional=True, tooltip="From HunyuanPortrait Loader."),
                HPConditions.Input("hunyuan_conditions", optional=True,
                                   tooltip="From HunyuanPortrait Driving Conditions (optional: frames and size "
                                           "otherwise)."),
                SpeedOptionsType.Input("speed", optional=True,
                                       tooltip="Optional: the Speed Options the sampler gets. sdpa_math's score "
                                               "matrices and cache_interval's stored deep features are counted; "
                                               "the fused kernels and torch.compile are estimated as plain SDPA."),
            ],
            outputs=[
                io.String.Output(display_name="report", tooltip="The estimate, per stage, and whether it fits."),
                io.Float.Output(display_name="peak_mb", tooltip="Estimated peak memory of the compute device (MB)."),
                io.Float.Output(display_name="seconds",
                                tooltip="Estimated time of the run alone (seconds; within about 2x on a CPU)."),
                io.Boolean.Output(display_name="fits", tooltip="Whether the peak fits the free memory now."),
            ],
            is_output_node=True,
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, frames, steps, size, window, decode_chunk, clip_length, output, hellomeme=None,
                hellomeme_conditions=None, memo=None, memo_conditions=None, hunyuan_portrait=None,
                hunyuan_conditions=None, speed=None) -> io.NodeOutput:
        from ..runtime import preflight as pf

        given = [name for name, value in (("hellomeme", hellomeme), ("memo", memo),
                                          ("hunyuan_portrait", hunyuan_portrait)) if value is not None]
        if len(given) != 1:
            raise ValueError("connect exactly one model (hellomeme, memo or hunyuan_portrait); got "
                             + (", ".join(given) or "none"))
        rt = node_runtime(cls)
        if hunyuan_portrait is not None:
            est = hunyuan_estimate(hunyuan_portrait, hunyuan_conditions, frames, steps, size, window, decode_chunk,
                                   output, rt, speed)
            resident = [h.module for h in hunyuan_portrait.sampling_models]
        elif memo is not None:
            est = memo_estimate(memo, memo_conditions, frames, steps, size, clip_length, output, rt, speed)
            resident = [h.module for h in memo.sampling_models]
        else:
            from ..sk_attention.preflight import modules

            est = hellomeme_estimate(hellomeme, hellomeme_conditions, steps, size, output, rt, speed)
            resident = modules(hellomeme["models"])
        if est.free is None:
            est.free = pf.free_bytes(rt, resident)
        text = est.summary()
        return io.NodeOutput(text, round(est.peak / pf.MB, 1), round(est.seconds, 1), bool(est.fits),
                             ui={"text": [est.json()]})


NODES = [Preflight]
