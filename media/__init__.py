"""Audio and video IO for the portrait-animation pipelines (plain torch/numpy; PyAV is imported when used).

* AUDIO values are ComfyUI dicts ``{"waveform": Tensor[B, C, T] float32, "sample_rate": int}``.
* Frames are ComfyUI IMAGE tensors ``[T, H, W, 3]`` float32 0..1 on the CPU.
"""
from __future__ import annotations

from .audio import (FIT_MODES, as_fraction, audio_duration, audio_frame_count, fit_length, is_silent, load_audio,
                    make_audio, peak_db, prepare_audio, resample, samples_for_frames, silent_audio, to_channels,
                    to_mono)
from .errors import MediaError
from .video import (AAC_SAMPLE_RATES, EVEN_MODES, aac_safe_rate, as_image_batch, audio_for_video, even_size,
                    VideoWriter, frames_to_components, iter_video_frames, read_video, video_info, write_video)

__all__ = [
    "AAC_SAMPLE_RATES", "EVEN_MODES", "FIT_MODES", "MediaError", "aac_safe_rate", "as_fraction", "as_image_batch",
    "audio_duration", "audio_for_video", "audio_frame_count", "even_size", "fit_length", "frames_to_components",
    "is_silent", "iter_video_frames", "load_audio", "make_audio", "peak_db", "prepare_audio", "read_video", "resample",
    "samples_for_frames", "silent_audio", "to_channels", "to_mono", "video_info", "write_video", "VideoWriter",
]
