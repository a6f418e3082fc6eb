"""HunyuanPortrait end to end (official ``inference.py``), composed from the pack's modules.

Given the pre-processed source (:class:`.preprocess.SourceInputs`-like tensors) and driving crops
(:class:`.preprocess.DrivingInputs`-like tensors):

1. appearance tokens: DINOv2 + IMAdapter on the 224 crop with the ArcFace embedding, then the image projector
   -> (1, 64, 1024);
2. motion tokens per chunk of ``n_sample_frames`` driving frames (intensity ids from that chunk's landmarks,
   expression encoder -> refiner, head pose) -> (N, 64, 1024), faded padding of ``pad_frames`` at both ends
   -> (1, F, 64, 1024), F = N + 2 * pad_frames;
3. VAE encoding of the reference (init latents + concat conditioning), init = ref_latents + sigma_0 * noise over F;
4. the long-sequence window sampler over F frames with the constant pose-guider map of a black image;
5. chunked decode, ``x * 0.5 + 0.5`` clamped, pads trimmed -> (1, 3, N, H, W) in [0, 1];
6. uint8 by truncation and the soft paste-back onto the static source image (:func:`iter_pasted_frames`).

Official settings (``config/hunyuan-portrait.yaml``) are the defaults of :class:`PortraitSettings`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from ..motion.hunyuan import loading as motion_loading
from ..motion.hunyuan.intensity import IntensitySettings
from ..motion.hunyuan.tokens import motion_tokens
from ..runtime.speed import SpeedOptions, accelerated, reuse_interval
from . import appearance_loading, identity, paste_back
from . import pose_guider as hp_pose_guider
from . import scheduler as hp_scheduler
from . import unet as hp_unet
from . import vae as hp_vae
from .sampler import SamplerSettings, pad_motion, sample

UNET_FILE = "hyportrait/unet.pth"


@dataclass
class PortraitSettings:
    """Generation settings under the official yaml names; defaults are the official inference values (the sampler's
    ones come from :class:`SamplerSettings`)."""

    width: int = 512
    height: int = 512
    num_inference_steps: int = SamplerSettings.steps
    pad_frames: int = 15
    n_sample_frames: int = SamplerSettings.window  # window length and intensity-id chunk
    overlap: int = SamplerSettings.overlap
    shift_offset: int = SamplerSettings.shift_offset
    fps: float = SamplerSettings.fps  # SVD added-time id (not the output rate)
    motion_bucket_id: float = SamplerSettings.motion_bucket_id
    noise_aug_strength: float = SamplerSettings.noise_aug_strength
    decode_chunk_size: int = 8
    min_appearance_guidance_scale: float = SamplerSettings.min_appearance_guidance
    max_appearance_guidance_scale: float = SamplerSettings.max_appearance_guidance
    min_motion_guidance_scale: float = SamplerSettings.min_motion_guidance
    max_motion_guidance_scale: float = SamplerSettings.max_motion_guidance
    i2i_noise_strength: float = SamplerSettings.i2i_strength
    border_ratio: float = 0.1            # paste-back ramp width

    def __post_init__(self):
        for name in ("width", "height"):
            value = getattr(self, name)
            if value <= 0 or value % 8:
                raise ValueError(f"{name} must be a positive multiple of 8, got {value}")
        for name in ("num_inference_steps", "n_sample_frames", "decode_chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("pad_frames", "shift_offset"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0 <= self.overlap < self.n_sample_frames:
            raise ValueError(f"overlap must be in [0, n_sample_frames={self.n_sample_frames}), got {self.overlap}")
        if not 0 < self.i2i_noise_strength <= 1:
            raise ValueError(f"i2i_noise_strength must be in (0, 1], got {self.i2i_noise_strength}")
        if not 0 <= self.border_ratio < 0.5:
            raise ValueError(f"border_ratio must be in [0, 0.5), got {self.border_ratio}")

    def sampler_settings(self) -> SamplerSettings:
        return SamplerSettings(
            steps=self.num_inference_steps, window=self.n_sample_frames, overlap=self.overlap,
            shift_offset=self.shift_offset, min_appearance_guidance=self.min_appearance_guidance_scale,
            max_appearance_guidance=self.max_appearance_guidance_scale,
            min_motion_guidance=self.min_motion_guidance_scale, max_motion_guidance=self.max_motion_guidance_scale,
            fps=self.fps, motion_bucket_id=self.motion_bucket_id, noise_aug_strength=self.noise_aug_strength,
            i2i_strength=self.i2i_noise_strength)

    def intensity_settings(self) -> IntensitySettings:
        return IntensitySettings(chunk=self.n_sample_frames)

    def padded_length(self, driving_frames: int) -> int:
        return driving_frames + 2 * self.pad_frames


@dataclass
class PortraitModels:
    """Every network of one HunyuanPortrait checkpoint (ArcFace and the face detector live outside)."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: hp_scheduler.EulerConfig
    dino: torch.nn.Module
    image_proj: torch.nn.Module
    pose_guider: torch.nn.Module
    expression: torch.nn.Module
    head_pose: torch.nn.Module
    refiner: torch.nn.Module


def load_models(root: str | Path, dtype: torch.dtype = torch.float16, unet_config=None, vae_config=None,
                scheduler_config=None) -> PortraitModels:
    """The official layout under ``root`` (``hyportrait/*.pth``, ``vae/``, optional ``unet/config.json`` and
    ``scheduler/``). UNet, VAE, DINO, image projector and pose guider in ``dtype``; the motion nets in float32."""
    root = Path(root)
    if unet_config is None and (root / "unet" / "config.json").is_file():
        unet_config = root / "unet"
    if scheduler_config is None and (root / "scheduler").is_dir():
        scheduler_config = root / "scheduler"
    return PortraitModels(
        unet=hp_unet.load_unet(root / UNET_FILE, config=unet_config, dtype=dtype),
        vae=hp_vae.load_vae(root, config=vae_config, dtype=dtype),
        scheduler_config=hp_scheduler.scheduler_config(scheduler_config),
        dino=appearance_loading.load_dino(root / appearance_loading.DINO_FILE, dtype=dtype),
        image_proj=appearance_loading.load_image_proj(root / appearance_loading.IMAGE_PROJ_FILE, dtype=dtype),
        pose_guider=hp_pose_guider.load_pose_guider(root / hp_pose_guider.POSE_GUIDER_FILE, dtype=dtype),
        expression=motion_loading.load_expression_encoder(root / motion_loading.EXPRESSION_FILE, torch.float32),
        head_pose=motion_loading.load_head_pose(root / motion_loading.HEAD_POSE_FILE, torch.float32),
        refiner=motion_loading.load_motion_refiner(root / motion_loading.MOTION_REFINER_FILE, torch.float32),
    )


@dataclass
class PortraitResult:
    video: torch.Tensor                  # (1, 3, N, H, W) float32 in [0, 1], pads trimmed
    intensity_ids: np.ndarray            # (K, 2) int64 [head, exp] per chunk
    motion_tokens: torch.Tensor          # (1, F, 64, 1024) padded motion tokens
    final_latents: torch.Tensor          # (1, F, 4, h, w)

    def frames_uint8(self) -> np.ndarray:
        """(N, H, W, 3) uint8 by truncation."""
        return paste_back.video_to_uint8(self.video[0].permute(1, 2, 3, 0))


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def identity_embedding(raw_output: Optional[np.ndarray]) -> torch.Tensor:
    """ArcFace network output (1, 512) -> the L2-normalised embedding (1, 512); zeros when there is none."""
    if raw_output is None:
        return torch.from_numpy(identity.zero_embedding())
    return torch.from_numpy(np.asarray(identity.normalize_embedding(np.asarray(raw_output)), dtype=np.float32))


@torch.no_grad()
def appearance_tokens(models: PortraitModels, dino_image: torch.Tensor, id_embedding: torch.Tensor) -> torch.Tensor:
    """dino_image (3, 224, 224) or (1, 3, 224, 224), id_embedding (1, 512) -> (1, 64, 1024)."""
    device = _device_of(models.dino)
    image = dino_image if dino_image.ndim == 4 else dino_image[None]
    return models.image_proj(models.dino(image.to(device), id_embedding.to(device)))


@torch.no_grad()
def padded_motion_tokens(models: PortraitModels, face_crops: torch.Tensor, pose_crops: torch.Tensor,
                         landmarks: np.ndarray, settings: PortraitSettings) -> tuple[torch.Tensor, np.ndarray]:
    """face_crops, pose_crops (N, 3, M, M) in [0, 1]; landmarks (N, 5, 2) -> (1, F, 64, 1024) faded-padded tokens
    on the host and the intensity ids (K, 2). One chunk of crops at a time is on the motion nets' device."""
    tokens, ids = motion_tokens(models.expression, models.head_pose, models.refiner, face_crops, pose_crops,
                                landmarks, settings.intensity_settings(), out_device="cpu")     # (N, 64, 1024)
    return pad_motion(tokens[None], settings.pad_frames), ids


def trim_pads(video: torch.Tensor, pad: int) -> torch.Tensor:
    """(B, C, F, H, W) -> (B, C, F - 2 pad, H, W)."""
    return video[:, :, pad:video.shape[2] - pad]


def _draw(shape: Sequence[int], generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


@torch.no_grad()
def initial_draws(settings: PortraitSettings, driving_frames: int,
                  generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two Gaussian draws in the official order, on the CPU: noise augmentation (1, 3, H, W), then the latents
    (1, F, 4, h, w) over the padded sequence."""
    s = settings
    noise_aug = _draw((1, 3, s.height, s.width), generator)
    latents = _draw((1, s.padded_length(driving_frames), 4, s.height // 8, s.width // 8), generator)
    return noise_aug, latents


@torch.no_grad()
def denoise(models: PortraitModels, ref_img: torch.Tensor, appearance: torch.Tensor, motion: torch.Tensor,
            settings: PortraitSettings, noise_aug_noise: torch.Tensor, initial_noise: torch.Tensor, *,
            state_device: torch.device | str = "cpu", on_step: Optional[Callable[[int, torch.Tensor], None]] = None,
            on_window: Optional[Callable[[int, int, torch.Tensor], None]] = None,
            interrupt: Optional[Callable[[], None]] = None, speed: Optional[SpeedOptions] = None,
            resume_from: Optional[tuple[int, torch.Tensor]] = None) -> torch.Tensor:
    """ref_img (1, 3, H, W) in [-1, 1]; appearance (1, 64, 1024); motion (1, F, 64, 1024) padded -> final latents
    (1, F, 4, h, w) on ``state_device``. ``speed``: opt-in accelerations of the UNet (exact by default).
    ``resume_from``: ``(steps done, the state after them)`` to continue a run (see ``sampler.sample``).

    The sequence state (latents, the per-frame sums) and the motion tokens stay on ``state_device`` (the host by
    default); one window of ``n_sample_frames`` moves to the UNet's device at a time, so accelerator memory does not
    depend on the number of frames."""
    s = settings
    pose = hp_pose_guider.pose_feature_map(models.pose_guider, s.height, s.width)            # (320, h, w)
    scheduler = hp_scheduler.EulerVScheduler(models.scheduler_config, s.num_inference_steps)
    ref_latents, image_latents = hp_vae.encode_reference(models.vae, ref_img, s.noise_aug_strength, noise_aug_noise)
    state_device = torch.device(state_device)
    ref_latents = ref_latents.to(state_device)
    init = scheduler.add_noise(ref_latents, initial_noise.to(ref_latents),
                               scheduler.start_index(s.i2i_noise_strength))                  # (1, F, 4, h, w)
    done = 0
    if resume_from is not None:
        done, init = resume_from[0], resume_from[1].to(state_device)
    reuse_interval(speed, "HunyuanPortrait", supported=False)
    with accelerated(speed, [models.unet]):
        return sample(models.unet, scheduler, init, image_latents, appearance, motion.to(state_device), pose,
                      s.sampler_settings(), on_window=on_window, on_step=on_step, interrupt=interrupt,
                      done_steps=done)


@torch.no_grad()
def decode(models: PortraitModels, latents: torch.Tensor, settings: PortraitSettings,
           progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Final latents (1, F, 4, h, w) -> (1, 3, N, H, W) float32 in [0, 1] on the host, pads trimmed; decoded in
    independent chunks of ``decode_chunk_size`` frames, each moved to the host as it is done."""
    decoded = hp_vae.decode_latents(models.vae, latents, chunk=settings.decode_chunk_size, out_device="cpu",
                                    progress=progress)                                       # (1, 3, F, H, W)
    return trim_pads(hp_vae.to_video(decoded, inplace=True), settings.pad_frames)


@torch.no_grad()
def generate(models: PortraitModels, ref_img: torch.Tensor, dino_image: torch.Tensor, id_embedding: torch.Tensor,
             face_crops: torch.Tensor, pose_crops: torch.Tensor, landmarks: np.ndarray,
             settings: PortraitSettings | None = None, *, generator: Optional[torch.Generator] = None,
             noise_aug_noise: Optional[torch.Tensor] = None, initial_noise: Optional[torch.Tensor] = None,
             state_device: torch.device | str = "cpu",
             on_step: Optional[Callable[[int, torch.Tensor], None]] = None,
             interrupt: Optional[Callable[[], None]] = None) -> PortraitResult:
    """The whole animation of one source by N driving frames.

    ref_img (3, H, W) or (1, 3, H, W) in [-1, 1]; dino_image (3, 224, 224); id_embedding (1, 512); face_crops,
    pose_crops (N, 3, M, M) in [0, 1]; landmarks (N, 5, 2) pixels. The Gaussian draws, when not given, come from
    ``generator`` on the CPU in the official order (:func:`initial_draws`). The sequence state lives on
    ``state_device`` (see :func:`denoise`); the video comes back on the host.
    """
    s = settings or PortraitSettings()
    n = len(face_crops)
    if n < 1:
        raise ValueError("face_crops: no driving frames")
    if len(pose_crops) != n or len(landmarks) != n:
        raise ValueError(f"face_crops ({n}), pose_crops ({len(pose_crops)}) and landmarks ({len(landmarks)}) must "
                         "have one entry per driving frame")
    ref = ref_img if ref_img.ndim == 4 else ref_img[None]                     # (1, 3, H, W)
    if tuple(ref.shape[-2:]) != (s.height, s.width):
        raise ValueError(f"ref_img is {tuple(ref.shape[-2:])}, settings ask for {(s.height, s.width)}")
    if noise_aug_noise is None or initial_noise is None:
        drawn_aug, drawn_latents = initial_draws(s, n, generator)
        noise_aug_noise = drawn_aug if noise_aug_noise is None else noise_aug_noise
        initial_noise = drawn_latents if initial_noise is None else initial_noise

    appearance = appearance_tokens(models, dino_image, id_embedding)                       # (1, 64, 1024)
    motion, ids = padded_motion_tokens(models, face_crops, pose_crops, landmarks, s)        # (1, F, 64, 1024)
    final = denoise(models, ref, appearance, motion, s, noise_aug_noise, initial_noise, state_device=state_device,
                    on_step=on_step, interrupt=interrupt)                                   # (1, F, 4, h, w)
    video = decode(models, final, s)                                                        # (1, 3, N, H, W)
    return PortraitResult(video=video, intensity_ids=ids, motion_tokens=motion, final_latents=final)


def iter_pasted_frames(original: np.ndarray, video: torch.Tensor, crop_bbox: Sequence[int],
                       border_ratio: float = 0.1) -> Iterator[np.ndarray]:
    """Full-resolution uint8 frames (H0, W0, 3), one at a time: each generated frame of ``video``
    (1, 3, N, H, W) in [0, 1] truncated to uint8 and blended into ``crop_bbox`` of the static ``original``."""
    x1, y1, x2, y2 = (int(v) for v in crop_bbox)
    mask = paste_back.soft_mask(x2 - x1, y2 - y1, border_ratio)
    original = np.asarray(original)
    for t in range(video.shape[2]):
        crop = paste_back.video_to_uint8(video[0, :, t].permute(1, 2, 0))                  # (H, W, 3)
        yield paste_back.paste_back_frame(original, crop, (x1, y1, x2, y2), mask)


__all__ = ["PortraitModels", "PortraitResult", "PortraitSettings", "UNET_FILE", "appearance_tokens", "decode",
           "denoise", "generate", "identity_embedding", "initial_draws", "iter_pasted_frames", "load_models",
           "padded_motion_tokens", "trim_pads"]
