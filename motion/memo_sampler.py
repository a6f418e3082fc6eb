"""MEMO sampling: flow-matching Euler with single-scale CFG, clip by clip, with past frames and temporal memory.

Schedule (diffusers ``FlowMatchEulerDiscreteScheduler`` defaults: 1000 train steps, shift 1): ``n`` sigmas
``linspace(1, sigma_min, n)`` with ``sigma_min = float32(1/1000)`` (float64, then float32), timesteps
``sigma * 1000`` (float32), a final sigma 0; Euler ``x <- x + (sigma_next - sigma) * v`` in float32; the initial
latents are the raw N(0, 1) noise.

Clip loop (the official inference script + pipeline):

* clip 0's past frames are the reference image repeated N times; clip k's are the last N decoded frames of clip k-1
  (floats in [0, 1] mapped by ``2x - 1``, not quantised);
* ``[reference, N past frames]`` are VAE-encoded frame by frame (``latent_dist.mean * 0.18215``); the Reference Net
  runs once per clip at timestep 0 on them repeated twice with ``[image_proj(zeros), image_proj(face)]`` tokens;
* every step runs the Diffusion Net on ``[uncond, cond]``: uncond = ``image_proj(zeros)`` identity tokens, zero audio
  tokens (after audio_proj), emotion 9 (null), no reference tokens in self-attention; the temporal memory is rebuilt
  at every step of clip 0 (``is_new_audio``) and, for later clips, updated at step 0 only and reused afterwards;
* opt-in feature reuse (Speed Options' ``cache_interval`` n > 1, DeepCache-style): step 0 of each clip and every
  n-th step after it run the whole Diffusion Net, the steps between only its outermost blocks on the stored deep
  features (:meth:`~..memo.diffusion_net.DiffusionNet.reuses` gives the memory rule: the memory is the exact path's
  at every step). The Reference Net runs once per clip as always;
* ``v = u + scale * (c - u)``; after the last step the clip is decoded frame by frame (``/ 0.18215``, ``x/2 + 0.5``,
  clamp [0, 1]) and yielded, so only the last N frames of a clip are kept (bounded memory for any audio length).

Emotion per clip: the mode of the clip's per-frame labels (ties -> smallest label).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import numpy as np
import torch

from ..runtime.speed import DeepFeature, SpeedOptions, accelerated, reuse_interval

LATENT_SCALE = 0.18215
NULL_EMOTION = 9


# ---- schedule ----------------------------------------------------------------------------------------------------


@dataclass
class FlowMatchSchedule:
    timesteps: torch.Tensor  # (n,) float32, 1000 .. ~1
    sigmas: torch.Tensor  # (n + 1,) float32, 1 .. sigma_min, 0

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])


def flow_match_schedule(num_steps: int, num_train_timesteps: int = 1000, shift: float = 1.0) -> FlowMatchSchedule:
    """The default flow-matching Euler schedule (see the module docstring)."""
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    train = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy()
    train_sigmas = torch.from_numpy(train) / num_train_timesteps  # float32
    train_sigmas = shift * train_sigmas / (1 + (shift - 1) * train_sigmas)
    sigma_max, sigma_min = train_sigmas[0].item(), train_sigmas[-1].item()
    t = np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, num_steps)  # float64
    sigmas = t / num_train_timesteps
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    sigmas = torch.from_numpy(sigmas).to(torch.float32)
    timesteps = sigmas * num_train_timesteps
    return FlowMatchSchedule(timesteps=timesteps, sigmas=torch.cat([sigmas, torch.zeros(1)]))


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """``x + (sigma_next - sigma) * v`` in float32."""
    return x.float() + (sigma_next - sigma).float() * velocity.float()


def clip_emotion(frame_labels: torch.Tensor) -> int:
    """Mode of a clip's per-frame labels; ties resolve to the smallest label."""
    counts = torch.bincount(frame_labels.reshape(-1).long().cpu())
    return int(torch.argmax(counts).item())


# ---- VAE helpers (diffusers AutoencoderKL interface) -------------------------------------------------------------


def _param(module: torch.nn.Module) -> torch.Tensor:
    return next(module.parameters())


def vae_encode_frames(vae, frames: torch.Tensor, batch: int = 1) -> torch.Tensor:
    """``(N, 3, H, W)`` in [-1, 1] -> ``latent_dist.mean * 0.18215`` ``(N, 4, H/8, W/8)``, ``batch`` frames at a time
    (1: one frame at a time, as the original)."""
    p = _param(vae)
    step = max(1, int(batch))
    out = [vae.encode(frames[i:i + step].to(p.device, p.dtype)).latent_dist.mean
           for i in range(0, frames.shape[0], step)]
    return torch.cat(out) * LATENT_SCALE


def vae_decode_frames(vae, latents: torch.Tensor, batch: int = 1) -> torch.Tensor:
    """``(N, 4, h, w)`` latents -> ``(N, 3, H, W)`` in [0, 1] (``/ 0.18215``, decode ``batch`` frames at a time,
    ``x/2 + 0.5``)."""
    p = _param(vae)
    step = max(1, int(batch))
    latents = latents / LATENT_SCALE
    out = [vae.decode(latents[i:i + step].to(p.device, p.dtype)).sample for i in range(0, latents.shape[0], step)]
    return (torch.cat(out) / 2 + 0.5).clamp(0, 1)


def vae_image_preprocess(batch: torch.Tensor) -> torch.Tensor:
    """The official ``VaeImageProcessor.preprocess`` on a batch already in [-1, 1]: it maps [0, 1] -> [-1, 1] unless
    the batch has a negative value (so an all-bright batch is mapped a second time -- reproduced as released)."""
    return batch if batch.min() < 0 else batch * 2 - 1


# ---- sampler -----------------------------------------------------------------------------------------------------


@dataclass
class MemoSamplerSettings:
    steps: int = 20
    guidance_scale: float = 3.5
    frames_per_clip: int = 16
    num_past_frames: int = 16  # N: past frames of clip k > 0 (the last N decoded frames of clip k-1)
    num_init_past_frames: int | None = None  # clip 0: the reference image this many times (default N)
    faithful: bool = True  # reproduce the official tiling / preprocessing quirks
    offload_memory: bool = False  # keep the temporal memory on the CPU between clips
    # frames per VAE encode/decode call (the original: 1). 4 keeps the SD VAE at 512^2 within a 12 GB GPU: a 512^2
    # decode peaks near 2 GB per frame in half precision (full-resolution 128-channel activations), next to the
    # ~4 GB of fp16 UNets
    vae_batch: int = 4


@dataclass
class MemoClip:
    index: int
    frames: torch.Tensor  # (1, 3, F, H, W) float32 in [0, 1], CPU
    latents: torch.Tensor  # (1, 4, F, h, w) float32, CPU
    emotion: int


Inspector = Callable[[str, torch.Tensor], None]


class MemoSampler:
    """Autoregressive MEMO generation. Models are used where they are (device/dtype of their parameters).

    ``vae`` follows the diffusers ``AutoencoderKL`` interface (``encode(x).latent_dist.mean``, ``decode(z).sample``).
    """

    def __init__(self, vae, reference_net, diffusion_net, image_proj, settings: MemoSamplerSettings | None = None):
        self.vae, self.reference_net, self.diffusion_net, self.image_proj = vae, reference_net, diffusion_net, image_proj
        self.settings = settings or MemoSamplerSettings()

    @torch.no_grad()
    def identity_tokens(self, face_emb: torch.Tensor) -> torch.Tensor:
        """``[image_proj(zeros), image_proj(face)]`` -> (2, 4, 768)."""
        p = _param(self.image_proj)
        face = face_emb.reshape(1, -1).to(p.device, p.dtype)
        return torch.cat([self.image_proj(torch.zeros_like(face)), self.image_proj(face)])

    @torch.no_grad()
    def clips(self, ref_image: torch.Tensor, face_emb: torch.Tensor, audio_tokens: torch.Tensor,
              frame_emotions: torch.Tensor | None = None,
              noise: Callable[[int, tuple], torch.Tensor] | torch.Generator | int | None = None,
              inspect: Inspector | None = None, on_step: Callable[[int, int], None] | None = None,
              speed: SpeedOptions | None = None, resume=None, guard=None,
              on_retry: Callable[[int, int], None] | None = None) -> Iterator[MemoClip]:
        """Yield the generated clips one by one.

        ``ref_image (1, 3, H, W)`` in [-1, 1]; ``face_emb (1, 512)``; ``audio_tokens (1, T, tokens, A)`` after
        audio_proj with ``T`` a multiple of ``frames_per_clip``; ``frame_emotions (T,)`` labels (None: the null
        class for both halves); ``noise``: a function ``(clip, shape) -> tensor``, a CPU generator or a seed (the
        official draw: one CPU generator, bf16, clip after clip). ``inspect(name, tensor)`` sees intermediates
        (``clip{k}.ref_latents``, ``clip{k}.step{s}.{timestep,latents_in,velocity}``, ``clip{k}.final_latents``).
        ``speed``: opt-in accelerations of the Diffusion Net's steps (None: the exact path). ``resume``: a
        :class:`~..runtime.resume.ResumeJob` (None: off): each finished clip's final latents are saved as segment
        ``clip<k>``; a run that finds clips 0..d-1 there replays them (see :func:`replayed_clips`) and samples from
        clip d on, with the same frames as an uninterrupted run.
        ``guard``: an identity guard (``metrics.identity_guard.ClipGuard``; None: off) that scores every decoded
        clip and may have it made again anchored on the reference (:meth:`guarded_clip`); the next clip continues from
        the attempt it keeps. ``on_retry(clip, attempt)`` is called before a retry starts (its ``steps`` denoising
        steps then report through ``on_step`` under that clip): a progress bar grows its total by them.
        """
        s = self.settings
        net = self.diffusion_net
        dev, dtype = _param(net).device, _param(net).dtype
        f, n = s.frames_per_clip, s.num_past_frames
        total = audio_tokens.shape[1]
        limit = getattr(net, "max_clip_frames", None)  # the temporal positional table covers the clip's frames
        if limit is not None and not 1 <= f <= limit:
            raise ValueError(f"frames_per_clip={f}: the Diffusion Net's temporal position table takes 1 to {limit} "
                             "frames per clip")
        if total % f != 0:
            raise ValueError(f"audio has {total} frames: pad it to a multiple of frames_per_clip={f} first")
        num_clips = total // f
        schedule = flow_match_schedule(s.steps)
        draw = _noise_source(noise)
        inspect = inspect or (lambda name, t: None)

        tokens = self.identity_tokens(face_emb)  # (2, 4, 768)
        ref_image = ref_image.reshape(1, *ref_image.shape[-3:]).float().cpu()
        past = ref_image.repeat(s.num_init_past_frames or n, 1, 1, 1)  # (N, 3, H, W) in [-1, 1]
        h, w = ref_image.shape[-2] // _vae_factor(self.vae), ref_image.shape[-1] // _vae_factor(self.vae)
        uc_mask = torch.cat([torch.ones(f, dtype=torch.bool), torch.zeros(f, dtype=torch.bool)])
        interval = reuse_interval(speed, "MEMO")  # feature reuse across steps (opt-in; 1: every step whole)
        net.reset_memory()
        ref_latent = {}  # the reference image's latent, encoded once per run (per preprocessing outcome)
        finished = replayed_clips(resume, num_clips, (1, 4, f, h, w))  # resume: final latents of clips 0..d-1

        for k in range(num_clips):
            # [reference, N past frames]; faithful: one preprocessing decision for the whole batch, as released
            remap = bool(s.faithful and min(ref_image.min().item(), past.min().item()) >= 0)
            if remap not in ref_latent:
                ref_latent[remap] = vae_encode_frames(self.vae, ref_image * 2 - 1 if remap else ref_image).float()
            past_latents = vae_encode_frames(self.vae, past * 2 - 1 if remap else past, s.vae_batch).float()
            ref_latents = torch.cat([ref_latent[remap], past_latents])  # (1+N, 4, h, w)
            inspect(f"clip{k}.ref_latents", ref_latents)
            ref_features = self.reference_net(ref_latents.repeat(2, 1, 1, 1).to(dev, dtype), 0.0, tokens.to(dev, dtype),
                                              faithful_tiling=s.faithful)

            clip_audio = audio_tokens[:, k * f:(k + 1) * f].to(dev, dtype)
            audio = torch.cat([torch.zeros_like(clip_audio), clip_audio])  # [uncond, cond]
            label = clip_emotion(frame_emotions[k * f:(k + 1) * f]) if frame_emotions is not None else NULL_EMOTION
            emotion = torch.tensor([NULL_EMOTION, label], device=dev)

            latents = draw(k, (1, 4, f, h, w)).to(dev, torch.float32)
            if k < len(finished):
                # a finished clip: only its temporal-memory update (step 0's call; the memory reads the past frames
                # alone) is replayed, then its saved final latents are decoded as below
                with accelerated(speed, [net]):
                    net(torch.cat([latents, latents]).to(dtype), ref_features, schedule.timesteps[0].to(dev),
                        tokens.to(dev, dtype), audio, emotion, uc_mask=uc_mask, is_new_audio=k == 0,
                        update_past_memory=True, faithful_tiling=s.faithful, reference_cache={}, deep=None)
                latents = finished[k].to(dev, torch.float32)
                if on_step is not None:
                    for step in range(len(schedule)):
                        on_step(k, step)
            reference_cache = {}  # what the Diffusion Net derives from this clip's reference features alone
            # feature reuse: one store per clip (the features belong to this clip's memory and reference); step 0
            # (the memory update) and every interval-th step run whole, the steps between reuse
            deep = DeepFeature(dev) if interval > 1 else None
            with accelerated(speed, [net]):
                for step in range(len(schedule) if k >= len(finished) else 0):
                    t = schedule.timesteps[step]
                    inspect(f"clip{k}.step{step}.timestep", t)
                    inspect(f"clip{k}.step{step}.latents_in", latents)
                    model_in = torch.cat([latents, latents]).to(dtype)
                    if deep is not None:
                        deep.reuse = step % interval != 0
                    pred = net(model_in, ref_features, t.to(dev), tokens.to(dev, dtype), audio, emotion,
                               uc_mask=uc_mask, is_new_audio=k == 0, update_past_memory=step == 0,
                               faithful_tiling=s.faithful, reference_cache=reference_cache, deep=deep)
                    u, c = pred.float().chunk(2)
                    velocity = u + s.guidance_scale * (c - u)
                    inspect(f"clip{k}.step{step}.velocity", velocity)
                    latents = euler_step(latents, velocity, schedule.sigmas[step], schedule.sigmas[step + 1])
                    if on_step is not None:
                        on_step(k, step)
            del ref_features, reference_cache, deep
            inspect(f"clip{k}.final_latents", latents)
            if resume is not None and k >= len(finished):
                resume.save(f"clip{k:05d}", {"latents": latents.cpu(), "emotion": label})

            if s.offload_memory:
                net.memory_to("cpu")
            frames = vae_decode_frames(self.vae, latents[0].transpose(0, 1), s.vae_batch).float().cpu()  # (F, 3, H, W)
            if guard is not None:  # identity guard: this clip, or an attempt re-anchored on the reference
                first = latents
                frames, latents = self.guarded_clip(guard, k, frames, latents, ref_image, face_emb, audio_tokens,
                                                    frame_emotions, speed, on_step, on_retry)
                if resume is not None and latents is not first:  # a re-anchored clip cannot be replayed: made again
                    resume.drop(f"clip{k:05d}")
            past = frames[-n:] * 2 - 1  # the official script: the last N frames of THIS clip (fewer if F < N)
            yield MemoClip(index=k, frames=frames.transpose(0, 1)[None], latents=latents.cpu(), emotion=label)

    def generate(self, *args, **kwargs) -> torch.Tensor:
        """All clips concatenated: ``(1, 3, T, H, W)`` in [0, 1]."""
        return torch.cat([clip.frames for clip in self.clips(*args, **kwargs)], dim=2)


    @torch.no_grad()
    def guarded_clip(self, guard, k: int, frames: torch.Tensor, latents: torch.Tensor, ref_image: torch.Tensor,
                     face_emb: torch.Tensor, audio_tokens: torch.Tensor, frame_emotions: torch.Tensor | None,
                     speed: SpeedOptions | None = None, on_step: Callable[[int, int], None] | None = None,
                     on_retry: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip ``k``'s kept attempt: ``frames (F, 3, H, W)`` in [0, 1] and its final ``latents (1, 4, F, h, w)``.

        ``guard.check(k, attempt, frames)`` scores an attempt and returns None (enough) or a retry plan with
        ``seed`` and ``guidance_scale``. A retry makes clip ``k`` again as a first clip: its past frames are the
        reference repeated and the temporal memory is rebuilt from them alone (``is_new_audio``), with clip ``k``'s
        audio and emotion, a new noise draw from ``seed`` and that guidance scale. ``guard.keep(k)`` then names
        the attempt to keep; the temporal memory is the one that attempt left (the others' memory is restored from
        a host copy), so the next clip continues from the kept attempt. ``on_retry(k, attempt)`` is called before
        each retry runs.
        """
        f = self.settings.frames_per_clip
        net = self.diffusion_net
        attempts = [(frames, latents)]
        states = {}  # attempt -> the temporal memory it left, on the host (only kept while a retry runs)
        plan = guard.check(k, 0, frames)
        while plan is not None:
            states[len(attempts) - 1] = {name: layer.memory.clone().to("cpu") for name, layer in net.memory_layers()}
            if on_retry is not None:
                on_retry(k, len(attempts))
            sub = MemoSampler(self.vae, self.reference_net, net, self.image_proj,
                              replace(self.settings, guidance_scale=float(plan.guidance_scale)))
            emotions = None if frame_emotions is None else frame_emotions[k * f:(k + 1) * f]
            step_fn = None if on_step is None else (lambda _clip, step: on_step(k, step))
            clip = next(iter(sub.clips(ref_image, face_emb, audio_tokens[:, k * f:(k + 1) * f], emotions,
                                       noise=int(plan.seed), on_step=step_fn, speed=speed)))
            attempts.append((clip.frames[0].transpose(0, 1), clip.latents))  # (F, 3, H, W), (1, 4, F, h, w)
            plan = guard.check(k, len(attempts) - 1, attempts[-1][0])
        keep = int(guard.keep(k))
        if keep != len(attempts) - 1:
            net.load_memory_state(states[keep])  # moved back to the network's device by its next call
        return attempts[keep]


def replayed_clips(resume, num_clips: int, shape: tuple) -> list[torch.Tensor]:
    """The saved final latents ``shape`` of clips 0..d-1 (the longest unbroken run of readable segments), [] without
    ``resume``. A clip's frames and the next clip's past frames follow from its final latents (decoded as usual);
    the temporal memory it left is rebuilt by replaying its memory update, one Diffusion Net call instead of
    ``steps``, so the run continues bit-identically without storing the (gigabyte-sized) memory state."""
    if resume is None:
        return []
    out = []
    for k in range(num_clips):
        seg = resume.load(f"clip{k:05d}")
        lat = seg.get("latents") if seg is not None else None
        if not isinstance(lat, torch.Tensor) or tuple(lat.shape) != tuple(shape) or lat.dtype != torch.float32:
            if seg is not None:
                resume.drop(f"clip{k:05d}")
                logging.getLogger(__name__).warning("resume cache: clip %d's segment does not fit this run "
                                                    "(latents %s); computing it again", k,
                                                    None if lat is None else tuple(lat.shape))
            break
        out.append(lat)
    if out:
        resume.resuming("clip", len(out), num_clips)
    return out


def _vae_factor(vae) -> int:
    cfg = getattr(vae, "config", None)
    boc = getattr(cfg, "block_out_channels", None) if cfg is not None else None
    return 2 ** (len(boc) - 1) if boc else 8


def _noise_source(noise) -> Callable[[int, tuple], torch.Tensor]:
    if callable(noise) and not isinstance(noise, torch.Generator):
        return noise
    if noise is None or isinstance(noise, int):
        gen = torch.Generator("cpu").manual_seed(0 if noise is None else int(noise))
    else:
        gen = noise
    # the official draw: CPU generator, bfloat16, consecutive clips from the same stream
    return lambda clip, shape: torch.randn(shape, generator=gen, dtype=torch.bfloat16).float()
