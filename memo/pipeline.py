"""MEMO end to end: the official files from the model store, audio conditions, identity and clip-by-clip sampling.

:func:`load_memo_bundle` resolves every file through the :class:`~..loaders.store.ModelStore` (downloading only when
asked), loads each network strictly and registers it with the runtime (ComfyUI's model management inside ComfyUI).
:func:`talking_frames` runs the sampler clip by clip and yields the frames of each clip as soon as they are decoded,
so the accelerator holds one clip at a time whatever the length of the audio.

Faithful vs default: ``faithful=True`` reproduces the original's batching quirks (identity tokens and reference
features tiled over the CFG batch with a plain repeat, so some conditioned frames see the unconditioned reference;
the double [0,1]->[-1,1] mapping of an all-bright batch). The default (``faithful=False``) gives every CFG half its
own tokens and features, which is what the model saw in training.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..loaders.manifest import load_manifest
from ..loaders.store import ModelStore, ProgressFn
from ..runtime.base import ModelHandle, Runtime

DEFAULT_RESOLUTION = 512


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
    paths = store.ensure(manifest.select(groups=memo_groups(emotion_model, vocal_separation, identity)),
                         download=download, progress=progress)
    supported = (torch.bfloat16, torch.float16, torch.float32)
    dt = runtime.dtype(dtype, "diffusion", supported)
    root = paths["reference_net"].parent.parent  # .../portrait_animation/memo
    manage = runtime.manage

    vae_path = paths["vae"]
    bundle = MemoBundle(
        runtime=runtime, dtype=dt,
        vae=manage("memo.vae", load_vae_file(vae_path, config=sidecar_config(vae_path)), dt),
        reference_net=manage("memo.reference_net", load_reference_net(root / "reference_net"), dt),
        diffusion_net=manage("memo.diffusion_net", load_diffusion_net(root / "diffusion_net"), dt),
        image_proj=manage("memo.image_proj", load_image_proj(root / "image_proj"), dt),
        audio_proj=manage("memo.audio_proj", load_audio_proj(root / "audio_proj"), torch.float32),
        wav2vec=manage("memo.wav2vec2", load_wav2vec2(paths["wav2vec2_base_960h"],
                                                       config=sidecar_config(paths["wav2vec2_base_960h"])),
                       torch.float32),
    )
    if emotion_model:
        from ..audio.emotion2vec import load_emotion2vec

        bundle.emotion_classifier = manage("memo.emotion_classifier",
                                           load_emotion_classifier(root / "misc" / "audio_emotion_classifier"),
                                           torch.float32)
        bundle.emotion2vec = manage("memo.emotion2vec", load_emotion2vec(paths["emotion2vec_model"].parent),
                                    torch.float32)
    else:
        bundle.notes.append("emotion model not loaded: 'auto' emotion uses neutral for every clip")
    if vocal_separation:
        from ..audio.separation import VocalSeparator

        sep_dir = paths["kim_vocal_2"].parent
        bundle.separator = VocalSeparator.from_files(paths["kim_vocal_2"], sep_dir / "mdx_model_data.json",
                                                     device=runtime.device)
    if identity:
        from .identity import FaceEmbedder

        bundle.face = FaceEmbedder(paths["insightface_scrfd_10g_bnkps"], paths["insightface_glintr100"])
    return bundle


def condition(bundle: MemoBundle, audio: dict, fps: float = 30, clip_length: int = 16, emotion: str = "auto",
              separate_vocals: bool = False, runtime: Runtime | None = None):
    """The audio conditions (see :func:`..audio.conditioner.condition_audio`) with the bundle's models."""
    from ..audio.conditioner import condition_audio

    if separate_vocals and bundle.separator is None:
        raise ValueError("vocal separation was requested but the MEMO loader did not load the separator: turn on "
                         "'vocal_separation' on the MEMO loader node")
    return condition_audio(audio, fps=fps, clip_length=clip_length, wav2vec=bundle.wav2vec,
                           emotion2vec=bundle.emotion2vec, emotion_classifier=bundle.emotion_classifier,
                           separator=bundle.separator, emotion=emotion, separate_vocals=separate_vocals,
                           runtime=runtime or bundle.runtime)


def face_embedding(bundle: MemoBundle, image: torch.Tensor, on_missing_face: str = "error",
                   input_name: str = "reference") -> torch.Tensor:
    """The raw 512-d identity embedding of the largest face in ``image`` (IMAGE ``(1,H,W,3)`` or ``(H,W,3)``).

    ``on_missing_face="uncond"`` continues with zeros (= the unconditioned identity) when no face is found or the
    identity models were not loaded; ``"error"`` raises a message naming the input and the fix.
    """
    if bundle.face is None:
        if on_missing_face == "uncond":
            return torch.zeros(512)
        raise ValueError("the MEMO loader was run without the identity models ('identity' off): turn it on, or set "
                         "'on_missing_face' to 'uncond' to animate without an identity embedding")
    emb = bundle.face.embed(image[:1] if image.ndim == 4 else image, input_name=input_name,
                            on_missing_face=on_missing_face)
    return torch.as_tensor(emb).float().reshape(512)


def reference_tensor(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """IMAGE ``(1,H,W,3)`` in [0,1] -> ``(1,3,height,width)`` in [-1,1] (plain resize, as MEMO's preprocessing)."""
    import torch.nn.functional as F

    if width % 8 or height % 8:
        raise ValueError(f"MEMO needs a width and height divisible by 8, got {width}x{height}")
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
    faithful: bool = False
    width: int = DEFAULT_RESOLUTION
    height: int = DEFAULT_RESOLUTION


def talking_frames(bundle: MemoBundle, reference: torch.Tensor, conditions, face_emb: torch.Tensor,
                   settings: MemoSettings | None = None,
                   on_clip: Callable[[int, int], None] | None = None,
                   runtime: Runtime | None = None) -> Iterator[torch.Tensor]:
    """Yield IMAGE batches ``(F, H, W, 3)`` (CPU, [0,1]) clip after clip; the last clip is trimmed to the audio.

    ``runtime``: the one reporting progress (the calling node's); default the bundle's."""
    from ..motion.memo_sampler import MemoSampler, MemoSamplerSettings

    s = settings or MemoSettings()
    rt = runtime or bundle.runtime
    f = conditions.clip_length
    num_clips = conditions.num_frames // f
    rt.load(bundle.sampling_models)
    audio_tokens = _audio_tokens(bundle, conditions)  # (1, T, 32, 768) CPU
    frame_emotions = torch.tensor(conditions.clip_emotions, dtype=torch.int64).repeat_interleave(f)
    sampler = MemoSampler(bundle.vae.module, bundle.reference_net.module, bundle.diffusion_net.module,
                          bundle.image_proj.module,
                          MemoSamplerSettings(steps=s.steps, guidance_scale=s.guidance_scale, frames_per_clip=f,
                                              num_past_frames=s.num_past_frames, faithful=s.faithful,
                                              offload_memory=False))
    keep = conditions.frames_with_audio
    with rt.progress(num_clips * s.steps, desc="MEMO") as bar:
        clips = sampler.clips(reference_tensor(reference, s.width, s.height), face_emb.reshape(1, 512), audio_tokens,
                              frame_emotions=frame_emotions, noise=int(s.seed), on_step=lambda k, step: bar.update(1))
        for clip in clips:
            frames = clip.frames[0].permute(1, 2, 3, 0)  # (F, H, W, 3)
            start = clip.index * f
            if start >= keep:
                break
            frames = frames[: keep - start]
            if on_clip is not None:
                on_clip(clip.index, num_clips)
            yield frames


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
