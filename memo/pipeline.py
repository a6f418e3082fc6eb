"""MEMO end to end: the official files from the model store, audio conditions, identity and clip-by-clip sampling.

:func:`load_memo_bundle` resolves every file through the :class:`~..loaders.store.ModelStore` (downloading only when
asked), loads each network strictly and registers it with the runtime (ComfyUI's model management inside ComfyUI).
:func:`talking_frames` runs the sampler clip by clip and yields the frames of each clip as soon as they are decoded,
so the accelerator holds one clip at a time whatever the length of the audio.

Faithful (the default) vs corrected: ``faithful=True`` reproduces the original's batching quirks (identity tokens
and reference features tiled over the CFG batch with a plain repeat, so some conditioned frames see the unconditioned
reference; the double [0,1]->[-1,1] mapping of an all-bright batch). It is the default because the published results
were made that way. ``faithful=False`` gives every CFG half its own tokens and features, which is what the model saw
in training (batch 1, no CFG mixing); it is an option, not what the released demos show.

Precision (:func:`memo_dtype`): ``auto`` is bf16 where the device computes it natively, else fp32 -- the precisions
MEMO was trained and released in. fp16 is used only when asked for, with a warning (activations can overflow).

Settings that could only fail later are checked before any work (:func:`check_clip_length`,
:func:`resolution_problem`, :func:`check_settings`), naming the input and the allowed range.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..loaders.manifest import load_manifest
from ..loaders.store import ModelStore, ProgressFn
from ..runtime.base import ModelHandle, Runtime, parse_dtype

log = logging.getLogger(__name__)

DEFAULT_RESOLUTION = 512
RESOLUTION_MIN, RESOLUTION_MAX, RESOLUTION_STEP = 64, 2048, 8  # square side in pixels; the VAE needs multiples of 8
MEMO_AUTO_DTYPES = (torch.bfloat16, torch.float32)  # what MEMO was trained / released in, preferred first
MEMO_RUN_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
FP16_WARNING = ("MEMO runs in fp16 (%s). MEMO was trained and released in bf16/fp32; in fp16 its activations can "
                "overflow (black, noisy or NaN frames). Use bf16, or fp32 where bf16 is not supported, if that "
                "happens.")


def sidecar_config(path: Path) -> dict | None:
    """``<file>.config.json`` beside a single-file model overrides the embedded config (small test models)."""
    import json

    side = path.with_name(path.name.split(".")[0] + ".config.json")
    return json.loads(side.read_text()) if side.is_file() else None


@dataclass
class MemoBundle:
    """Everything MEMO needs, loaded once (a loader node's output)."""

    runtime: Runtime
    dtype: torch.dtype
    vae: ModelHandle
    reference_net: ModelHandle
    diffusion_net: ModelHandle
    image_proj: ModelHandle
    audio_proj: ModelHandle
    wav2vec: ModelHandle
    emotion2vec: ModelHandle | None = None
    emotion_classifier: ModelHandle | None = None
    separator: object | None = None
    face: object | None = None  # memo.identity.FaceEmbedder
    notes: list[str] = field(default_factory=list)

    @property
    def sampling_models(self) -> list[ModelHandle]:
        return [self.vae, self.reference_net, self.diffusion_net, self.image_proj, self.audio_proj]

    @property
    def audio_models(self) -> list[ModelHandle]:
        return [h for h in (self.wav2vec, self.emotion2vec, self.emotion_classifier) if h is not None]


def memo_dtype(runtime: Runtime, requested: str | torch.dtype | None = None) -> torch.dtype:
    """The dtype of MEMO's diffusion networks and VAE.

    An explicit choice wins. ``auto`` (``None``) asks the runtime for its preference among bf16 and fp32 only
    (:data:`MEMO_AUTO_DTYPES`): bf16 where the device supports it natively, else fp32 -- never fp16, which MEMO was
    not released in. A runtime that forces another dtype (ComfyUI's ``--fp16-unet`` ...) is followed when MEMO can
    run in it, else fp32 is used and logged. fp16, however it was chosen, logs a warning.
    """
    chosen = parse_dtype(requested)
    how = f"dtype={requested}"
    if chosen is None:
        chosen = runtime.default_dtype("diffusion", MEMO_AUTO_DTYPES)
        how = f"forced by the {runtime.name} runtime's settings"
        if chosen not in MEMO_RUN_DTYPES:
            log.warning("MEMO: the %s runtime asks for %s, which MEMO's networks cannot compute in; using fp32",
                        runtime.name, chosen)
            chosen = torch.float32
    if chosen is torch.float16:
        log.warning(FP16_WARNING, how)
    return chosen


def memo_groups(emotion_model: bool, vocal_separation: bool, identity: bool) -> list[str]:
    groups = ["core", "audio"]
    if emotion_model:
        groups.append("emotion")
    if vocal_separation:
        groups.append("vocal_separation")
    if identity:
        groups.append("face")
    return groups


def load_memo_bundle(runtime: Runtime, store: ModelStore | None = None, dtype=None, download: bool = False,
                     emotion_model: bool = True, vocal_separation: bool = False, identity: bool = True,
                     progress: ProgressFn | None = None) -> MemoBundle:
    """Load MEMO's networks and pre-processing models (missing files: the store's error, or a download)."""
    from ..audio.wav2vec import load_wav2vec2
    from ..sk_attention.base_models import load_vae_file
    from .loading import (load_audio_proj, load_diffusion_net, load_emotion_classifier, load_image_proj,
                          load_reference_net)

    store = store or ModelStore.default()
    manifest = load_manifest("memo")
    located = store.ensure_located(manifest.select(groups=memo_groups(emotion_model, vocal_separation, identity)),
                                   download=download, progress=progress)
    paths = {file_id: loc.path for file_id, loc in located.items()}
    dt = memo_dtype(runtime, dtype)
    # each folder from where its own weights were found: the store may find them in different places (the canonical
    # folder, IF_MemoAvatar's checkpoints/memo/..., the Hugging Face cache)
    folder = {part: paths[part].parent for part in ("reference_net", "diffusion_net", "image_proj", "audio_proj")}
    manage = runtime.manage

    vae_path = paths["vae"]
    bundle = MemoBundle(
        runtime=runtime, dtype=dt,
        vae=manage("memo.vae", load_vae_file(vae_path, config=sidecar_config(vae_path)), dt),
        reference_net=manage("memo.reference_net", load_reference_net(folder["reference_net"]), dt),
        diffusion_net=manage("memo.diffusion_net", load_diffusion_net(folder["diffusion_net"]), dt),
        image_proj=manage("memo.image_proj", load_image_proj(folder["image_proj"]), dt),
        audio_proj=manage("memo.audio_proj", load_audio_proj(folder["audio_proj"]), torch.float32),
        wav2vec=manage("memo.wav2vec2", load_wav2vec2(paths["wav2vec2_base_960h"],
                                                       config=sidecar_config(paths["wav2vec2_base_960h"])),
                       torch.float32),
    )
    if emotion_model:
        from ..audio.emotion2vec import load_emotion2vec

        bundle.emotion_classifier = manage("memo.emotion_classifier",
                                           load_emotion_classifier(paths["emotion_classifier"].parent),
                                           torch.float32)
        bundle.emotion2vec = manage("memo.emotion2vec", load_emotion2vec(paths["emotion2vec_model"].parent),
                                    torch.float32)
    else:
        bundle.notes.append("emotion model not loaded: 'auto' emotion uses neutral for every clip")
    if vocal_separation:
        from ..audio.separation import VocalSeparator

        bundle.separator = VocalSeparator.from_files(paths["kim_vocal_2"], paths["vocal_separator_mdx_model_data"],
                                                     device=runtime.device)
    if identity:
        from .identity import FaceEmbedder

        bundle.face = FaceEmbedder(paths["insightface_scrfd_10g_bnkps"], paths["insightface_glintr100"])
    bundle.notes[:0] = load_report_lines(located, bundle)
    return bundle


def load_report_lines(located: dict, bundle: MemoBundle) -> list[str]:
    """What the loader did with each file: where it was found when not at its canonical place, and every key that
    was converted, dropped or ignored while loading (the same lines go to the log)."""
    lines = [f"{file_id}: {loc.path} ({loc.how}: {loc.reason})" for file_id, loc in sorted(located.items())
             if getattr(loc, "how", "canonical") != "canonical"]
    for handle in (bundle.vae, bundle.reference_net, bundle.diffusion_net, bundle.image_proj, bundle.audio_proj,
                   bundle.wav2vec, bundle.emotion_classifier, bundle.emotion2vec):
        report = getattr(getattr(handle, "module", handle), "load_report", None)
        if report is not None and (len(report.lines()) > 1 or report.file_dtype):
            lines += report.lines()
    return lines


def condition(bundle: MemoBundle, audio: dict, fps: float = 30, clip_length: int = 16, emotion: str = "auto",
              separate_vocals: bool = False, runtime: Runtime | None = None):
    """The audio conditions (see :func:`..audio.conditioner.condition_audio`) with the bundle's models."""
    from ..audio.conditioner import condition_audio

    check_clip_length(bundle, clip_length)  # before any audio work
    if separate_vocals and bundle.separator is None:
        raise ValueError("vocal separation was requested but the MEMO loader did not load the separator: turn on "
                         "'vocal_separation' on the MEMO loader node")
    return condition_audio(audio, fps=fps, clip_length=clip_length, wav2vec=bundle.wav2vec,
                           emotion2vec=bundle.emotion2vec, emotion_classifier=bundle.emotion_classifier,
                           separator=bundle.separator, emotion=emotion, separate_vocals=separate_vocals,
                           runtime=runtime or bundle.runtime)


def clip_length_limit(bundle: MemoBundle) -> int | None:
    """The largest ``clip_length`` the loaded Diffusion Net takes (its temporal positional table), None if unlimited."""
    return getattr(bundle.diffusion_net.module, "max_clip_frames", None)


def check_clip_length(bundle: MemoBundle, clip_length: int, where: str = "input 'clip_length'") -> None:
    """Reject a clip length the loaded Diffusion Net cannot take, before any audio is encoded or frame sampled.

    The limit is the checkpoint's temporal positional table (``pos_encoder.pe`` rows): it covers the frames of the
    current clip only (the past frames get no positions), so ``past_frames`` does not count against it.
    """
    limit = clip_length_limit(bundle)
    value = int(clip_length)
    if value < 1 or (limit is not None and value > limit):
        allowed = f"1 to {limit}" if limit is not None else "1 or more"
        table = (f"the loaded MEMO diffusion_net's temporal position table has {limit} rows"
                 if limit is not None else "a clip needs at least one frame")
        raise ValueError(f"{where} is {value}, but {table}: use a clip_length from {allowed} "
                         "(MEMO was trained with 16)")


def resolution_problem(resolution, name: str = "resolution") -> str | None:
    """Why MEMO cannot take this square frame size (a message naming the input and the allowed values), or None.

    The frames are VAE-encoded to latents 8x smaller, so the side must be a multiple of 8 (the Diffusion Net itself
    takes any latent size: it upsamples to the sizes of its skip connections). ``None`` (a linked input, unknown at
    validation time) passes; it is checked again when the node runs.
    """
    if resolution is None:
        return None
    value = int(resolution)
    if RESOLUTION_MIN <= value <= RESOLUTION_MAX and value % RESOLUTION_STEP == 0:
        return None
    return (f"input '{name}' is {value}: MEMO needs a multiple of {RESOLUTION_STEP} from {RESOLUTION_MIN} to "
            f"{RESOLUTION_MAX} (e.g. {nearest_resolution(value)}; MEMO was trained at {DEFAULT_RESOLUTION})")


def nearest_resolution(value: int) -> int:
    value = min(max(int(value), RESOLUTION_MIN), RESOLUTION_MAX)
    return int(round(value / RESOLUTION_STEP)) * RESOLUTION_STEP


def check_settings(bundle: MemoBundle, conditions, settings: "MemoSettings") -> None:
    """Everything about a sampling run that would only fail (or be silently cut) later, checked before any work.

    Raises ``ValueError`` naming the input for a clip length the network cannot take or a frame size the VAE cannot
    take. Cheap and silent, so a node can call it first and :func:`talking_frames` again.
    """
    check_clip_length(bundle, conditions.clip_length,
                      where="the conditions' clip_length (input 'clip_length' of MEMO Audio Conditioner)")
    for name, value in (("resolution", settings.width), ("resolution", settings.height)):
        problem = resolution_problem(value, name)
        if problem:
            raise ValueError(problem)
    if settings.num_past_frames < 1:
        raise ValueError(f"input 'past_frames' is {settings.num_past_frames}: use 1 or more")


def face_embedding(bundle: MemoBundle, image: torch.Tensor, on_missing_face: str = "error",
                   input_name: str = "reference") -> torch.Tensor:
    """The raw 512-d identity embedding of the largest face in ``image`` (IMAGE ``(1,H,W,3)`` or ``(H,W,3)``).

    ``on_missing_face="uncond"`` continues with zeros (= the unconditioned identity) when no face is found or the
    identity models were not loaded; ``"error"`` raises a message naming the input and the fix.
    """
    if bundle.face is None:
        if on_missing_face == "uncond":
            log.warning("MEMO: the identity models were not loaded ('identity' off on the loader): animating input "
                        "'%s' without an identity embedding (unconditioned identity)", input_name)
            return torch.zeros(512)
        raise ValueError("the MEMO loader was run without the identity models ('identity' off): turn it on, or set "
                         "'on_missing_face' to 'uncond' to animate without an identity embedding")
    emb = bundle.face.embed(image[:1] if image.ndim == 4 else image, input_name=input_name,
                            on_missing_face=on_missing_face)
    return torch.as_tensor(emb).float().reshape(512)


def reference_tensor(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """IMAGE ``(1,H,W,3)`` in [0,1] -> ``(1,3,height,width)`` in [-1,1] (plain resize, as MEMO's preprocessing)."""
    import torch.nn.functional as F

    if width % RESOLUTION_STEP or height % RESOLUTION_STEP:
        raise ValueError(f"MEMO needs a width and height divisible by {RESOLUTION_STEP}, got {width}x{height}")
    x = image[:1].permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1) * 2 - 1


@dataclass
class MemoSettings:
    steps: int = 20
    guidance_scale: float = 3.5
    num_past_frames: int = 16
    seed: int = 42
    faithful: bool = True  # as released (see the module docstring); False: each CFG half its own features
    width: int = DEFAULT_RESOLUTION
    height: int = DEFAULT_RESOLUTION


def talking_frames(bundle: MemoBundle, reference: torch.Tensor, conditions, face_emb: torch.Tensor,
                   settings: MemoSettings | None = None,
                   on_clip: Callable[[int, int], None] | None = None,
                   runtime: Runtime | None = None, speed=None, resume=None,
                   guard=None, vae_batch: int | None = None) -> Iterator[torch.Tensor]:
    """Yield IMAGE batches ``(F, H, W, 3)`` (CPU, [0,1]) clip after clip; the last clip is trimmed to the audio.

    ``runtime``: the one reporting progress (the calling node's); default the bundle's. ``speed``: opt-in
    accelerations (``runtime.speed.SpeedOptions``; None: the exact path). ``resume``: a
    ``runtime.resume.ResumeOptions`` (None: off): finished clips are cached and a re-run continues after them.
    ``guard``: an identity guard (``metrics.identity_guard.ClipGuard``; None: off) that scores each clip and may
    make it again anchored on the reference. ``vae_batch``: frames per VAE encode/decode call (None: the sampler's
    default, 4); it changes the memory of a run, not its frames (the preflight picks a smaller one when the default
    does not fit: ``memo/preflight.py``)."""
    from ..motion.memo_sampler import MemoSampler, MemoSamplerSettings

    s = settings or MemoSettings()
    check_settings(bundle, conditions, s)
    rt = runtime or bundle.runtime
    f = conditions.clip_length
    if s.num_past_frames > f:  # not an error (the original does the same), but not silent either
        log.warning("MEMO: past_frames=%d exceeds clip_length=%d: the first clip sees the reference %d times, later "
                    "clips only the %d frames of the previous clip (as in the original)", s.num_past_frames, f,
                    s.num_past_frames, f)
    if reference.ndim == 4 and reference.shape[0] > 1:
        log.warning("MEMO: the reference IMAGE batch holds %d images; only the first is animated", reference.shape[0])
    num_clips = conditions.num_frames // f
    rt.load(bundle.sampling_models)
    audio_tokens = _audio_tokens(bundle, conditions)  # (1, T, 32, 768) CPU
    frame_emotions = torch.tensor(conditions.clip_emotions, dtype=torch.int64).repeat_interleave(f)
    sampler = MemoSampler(bundle.vae.module, bundle.reference_net.module, bundle.diffusion_net.module,
                          bundle.image_proj.module,
                          MemoSamplerSettings(steps=s.steps, guidance_scale=s.guidance_scale, frames_per_clip=f,
                                              num_past_frames=s.num_past_frames, faithful=s.faithful,
                                              offload_memory=False,
                                              vae_batch=MemoSamplerSettings.vae_batch if vae_batch is None
                                              else max(1, int(vae_batch))))
    keep = conditions.frames_with_audio
    ref = reference_tensor(reference, s.width, s.height)
    from .resume import memo_job

    # the resume key: the VAE batch changes no frame, so a run continued with another batch is the same run
    job = memo_job(resume, bundle, ref, face_emb, audio_tokens, frame_emotions, s,
                   replace(sampler.settings, vae_batch=MemoSamplerSettings.vae_batch), speed)
    with rt.progress(num_clips * s.steps, desc="MEMO") as bar:
        clips = sampler.clips(ref, face_emb.reshape(1, 512), audio_tokens,
                              frame_emotions=frame_emotions, noise=int(s.seed), on_step=lambda k, step: bar.update(1),
                              speed=speed, resume=job, guard=guard,
                              on_retry=lambda k, attempt: bar.grow(s.steps))  # a retry runs the steps again
        for clip in clips:
            frames = clip.frames[0].permute(1, 2, 3, 0)  # (F, H, W, 3)
            start = clip.index * f
            if start >= keep:
                break
            frames = frames[: keep - start]
            if on_clip is not None:
                on_clip(clip.index, num_clips)
            yield frames
    if job is not None:
        job.finish()


def _audio_tokens(bundle: MemoBundle, conditions) -> torch.Tensor:
    """audio_proj over every clip's windows, one clip at a time on the device: ``(1, T, 32, 768)`` on the CPU."""
    proj = bundle.audio_proj.module
    p = next(proj.parameters())
    f = conditions.clip_length
    out = []
    with torch.no_grad():
        for k in range(conditions.num_frames // f):
            window = conditions.audio_emb[k * f:(k + 1) * f][None].to(p.device, p.dtype)  # (1, F, 5, L, H)
            out.append(proj(window).float().cpu())
    return torch.cat(out, dim=1)
