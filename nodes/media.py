"""Media nodes: load/prepare audio, video file or VIDEO -> frames + fps + audio, frames (+ audio) -> VIDEO.

Thin adapters over :mod:`..media` (plain torch + PyAV). Conventions:

* Audio always comes out as a core AUDIO dict. Where a video has no audio track, the nodes output *silent* audio
  (zeros, mono, 16 kHz) lasting exactly as long as the returned frames, never None and never zero-length, so audio
  inputs downstream (Prepare Audio, Frames To Video, audio encoders) keep working.
* Frames To Video pads or crops odd sizes to even ones and fits the audio to the video's duration, so core
  SaveVideo (h264 yuv420p + AAC) always succeeds.
* The file loaders list ComfyUI's input folder plus the pack's example inputs (``workflows/inputs/``, see
  :mod:`..media.samples`), so the shipped templates run on a fresh install; a user's file of the same name wins.
"""
from __future__ import annotations

import logging
import os

import folder_paths
from comfy_api.v0_0_2 import InputImpl, Types, io

from .. import media
from ..media.audio import FIT_MODES
from ..media.samples import sample_names, sample_path
from ..media.video import EVEN_MODES
from .common import CAT_MEDIA, PREFIX

log = logging.getLogger("portrait_animation")

NO_AUDIO_RATE = 16000  # sample rate of the silent track returned for videos without audio


def _input_files(kinds: list[str]) -> list[str]:
    """Files (not folders) in ComfyUI's input directory whose mime type is one of ``kinds``, plus the pack's example
    inputs of those kinds (``workflows/inputs/``), so a template opened on a fresh install finds its files."""
    input_dir = folder_paths.get_input_directory()
    try:
        names = [f for f in os.listdir(input_dir) if os.path.isfile(os.path.join(input_dir, f))]
    except OSError:
        names = []
    return sorted(folder_paths.filter_files_content_types(list(set(names) | set(sample_names())), kinds))


def _resolve(name: str) -> str:
    """Path of an input file: ComfyUI's input folder (annotations such as ``[output]`` honoured) first, else the
    pack's example input of that name; the input-folder path when neither exists (the caller reports it)."""
    path = folder_paths.get_annotated_filepath(name)
    if not os.path.isfile(path):
        sample = sample_path(name)
        if sample is not None:
            return str(sample)
    return path


def _file_fingerprint(name: str) -> str:
    """Changes when the file is replaced or edited (mtime and size), without hashing large files."""
    path = _resolve(name)
    try:
        st = os.stat(path)
    except OSError:
        return f"missing:{name}"
    return f"{st.st_mtime_ns}:{st.st_size}"


def _validate_file(name: str, what: str) -> bool | str:
    if not name or not os.path.isfile(_resolve(name)):
        return f"{what} file not found in ComfyUI's input folder: {name!r}"
    return True


def _silent_for(frames: int, fps) -> dict:
    return media.silent_audio(media.samples_for_frames(frames, fps, NO_AUDIO_RATE), NO_AUDIO_RATE)


def _select_frames(total: int, start: int, cap: int, step: int) -> int:
    """How many frames start/step/cap select from ``total``."""
    if start >= total:
        return 0
    n = -(-(total - start) // step)
    return min(n, cap) if cap > 0 else n


def _check_memory(path: str, start: int, cap: int, step: int) -> None:
    """Fail early (instead of being killed by the OS) when the selected frames cannot fit in free RAM as float32."""
    try:
        import psutil
    except ImportError:
        return
    try:
        info = media.video_info(path)
    except Exception:
        return  # read_video reports the real problem
    n = _select_frames(info["frames"], start, cap, step)
    need = n * info["width"] * info["height"] * 3 * 4
    free = psutil.virtual_memory().available
    if need > 0.9 * free:
        raise MemoryError(f"loading {n} frames of {info['width']}x{info['height']} from '{os.path.basename(path)}' "
                          f"needs {need / 2**30:.1f} GiB as float32 but only {free / 2**30:.1f} GiB RAM is free; "
                          "set frame_cap, raise select_every_nth, or shorten the video")


def _frame_select_inputs() -> list:
    """The frame selection widgets shared by the two video -> frames nodes (fresh objects per schema)."""
    return [
        io.Int.Input("start_frame", default=0, min=0, max=10_000_000,
                     tooltip="Skip this many frames at the start of the video (frame numbers count from 0)."),
        io.Int.Input("frame_cap", default=0, min=0, max=10_000_000,
                     tooltip="Most frames to return (after skipping and every-nth selection). 0 = all remaining "
                             "frames."),
        io.Int.Input("select_every_nth", default=1, min=1, max=1000,
                     tooltip="Keep every n-th frame (1 = all). The returned fps is the source fps divided by n, so "
                             "the frames still play in real time."),
    ]


def _frame_outputs() -> list:
    return [
        io.Image.Output(display_name="images", tooltip="The selected frames as an IMAGE batch [frames, H, W, 3]."),
        io.Float.Output(display_name="fps",
                        tooltip="Frame rate of the returned frames: source fps / select_every_nth."),
        io.Audio.Output(display_name="audio",
                        tooltip="The audio that plays with the returned frames (same start, same duration). Silent "
                                "16 kHz mono audio of that duration when the video has no audio track."),
        io.Int.Output(display_name="frame_count", tooltip="Number of frames returned."),
    ]


# ---------------------------------------------------------------------------------------------------------------------
class LoadAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_LoadAudio",
            display_name="Load Audio (Portrait Animation)",
            category=CAT_MEDIA,
            description="Loads an audio file (wav, flac, mp3, ogg, m4a, ... or the audio track of a video) from "
                        "ComfyUI's input folder with PyAV, keeping its sample rate and channels. Upload files with "
                        "core 'Load Audio' or copy them into the input folder, then refresh.",
            inputs=[
                # No upload widget: the frontends of ComfyUI 0.3.64 and 0.8.0 break custom nodes that set
                # audio_upload (Comfy-Org/ComfyUI_frontend#5189).
                io.Combo.Input("audio_file", options=_input_files(["audio", "video"]),
                               tooltip="Audio or video file in ComfyUI's input folder (or one of the pack's "
                                       "example inputs); the first audio track is decoded."),
            ],
            outputs=[io.Audio.Output(display_name="audio",
                                     tooltip="The decoded audio: waveform [1, channels, samples] float32, original "
                                             "sample rate.")],
        )

    @classmethod
    def execute(cls, audio_file) -> io.NodeOutput:
        path = _resolve(audio_file)
        audio = media.load_audio(path)
        if media.is_silent(audio):
            log.warning("Portrait Animation: '%s' is silent (peak below -60 dBFS); lip sync will not move",
                        audio_file)
        return io.NodeOutput(audio)

    @classmethod
    def fingerprint_inputs(cls, audio_file):
        return _file_fingerprint(audio_file)

    @classmethod
    def validate_inputs(cls, audio_file):
        return _validate_file(audio_file, "audio")


# ---------------------------------------------------------------------------------------------------------------------
class PrepareAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_PrepareAudio",
            display_name="Prepare Audio",
            category=CAT_MEDIA,
            description="Resamples (band-limited sinc), optionally downmixes to mono, and trims or zero-pads the "
                        "audio to exactly the duration of a number of video frames: round(frames / fps * "
                        "sample_rate) samples. Speech models (wav2vec2, Whisper) want 16 kHz mono.",
            inputs=[
                io.Audio.Input("audio", tooltip="Audio to prepare (any sample rate, channels and batch size)."),
                io.Int.Input("sample_rate", default=16000, min=0, max=192000, step=1,
                             tooltip="Output sample rate in Hz. 0 keeps the input's rate."),
                io.Boolean.Input("mono", default=True,
                                 tooltip="Average all channels into one (mono)."),
                io.Int.Input("frames", default=0, min=0, max=10_000_000,
                             tooltip="Video frame count to fit the audio to. 0 = keep the audio's own length (the "
                                     "frame_count output then tells how many frames it covers at fps)."),
                io.Float.Input("fps", default=25.0, min=0.01, max=240.0, step=0.01,
                               tooltip="Frame rate of the video the audio goes with (used with 'frames' and for "
                                       "the frame_count output)."),
                io.Combo.Input("mode", options=list(FIT_MODES), default="trim_or_pad",
                               tooltip="How to fit the length when 'frames' is set: trim_or_pad = exactly the "
                                       "frames' duration; trim = only shorten; pad = only lengthen with silence; "
                                       "none = keep the length."),
            ],
            outputs=[
                io.Audio.Output(display_name="audio", tooltip="The prepared audio (float32)."),
                io.Int.Output(display_name="frame_count",
                              tooltip="Video frames the prepared audio covers at fps ('frames' itself when the "
                                      "length was fitted exactly)."),
            ],
        )

    @classmethod
    def execute(cls, audio, sample_rate, mono, frames, fps, mode) -> io.NodeOutput:
        if audio is None:
            raise ValueError("Prepare Audio: no audio connected")
        n = int(frames) if frames and frames > 0 else None
        out = media.prepare_audio(audio, sample_rate=int(sample_rate) or None, mono=bool(mono), frames=n, fps=fps,
                                  mode=mode)
        if media.is_silent(out):
            log.warning("Portrait Animation: Prepare Audio got silent audio (peak below -60 dBFS)")
        count = n if (n is not None and mode == "trim_or_pad") else media.audio_frame_count(out, fps)
        return io.NodeOutput(out, count)


# ---------------------------------------------------------------------------------------------------------------------
class LoadVideoFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_LoadVideoFrames",
            display_name="Load Video (Frames)",
            category=CAT_MEDIA,
            description="Decodes a video from ComfyUI's input folder into an IMAGE batch with its fps and the "
                        "matching audio (silent 16 kHz audio when the video has none). Frames are streamed, so only "
                        "the selected frames are kept in memory; rotation metadata of phone videos is applied.",
            inputs=[
                io.Combo.Input("video", options=_input_files(["video"]), upload=io.UploadType.video,
                               tooltip="Video file in ComfyUI's input folder (mp4, webm, mov, mkv, ...) or one of "
                                       "the pack's example inputs."),
                *_frame_select_inputs(),
            ],
            outputs=_frame_outputs(),
        )

    @classmethod
    def execute(cls, video, start_frame, frame_cap, select_every_nth) -> io.NodeOutput:
        path = _resolve(video)
        _check_memory(path, int(start_frame), int(frame_cap), int(select_every_nth))
        frames, fps, audio = media.read_video(path, max_frames=int(frame_cap) or None, start=int(start_frame),
                                              step=int(select_every_nth))
        if audio is None:
            audio = _silent_for(frames.shape[0], fps)
        return io.NodeOutput(frames, float(fps), audio, int(frames.shape[0]))

    @classmethod
    def fingerprint_inputs(cls, video, **kwargs):
        return _file_fingerprint(video)

    @classmethod
    def validate_inputs(cls, video):  # only 'video': named inputs skip the built-in checks (kwargs would skip all)
        return _validate_file(video, "video")


# ---------------------------------------------------------------------------------------------------------------------
class VideoToFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_VideoToFrames",
            display_name="Video To Frames",
            category=CAT_MEDIA,
            description="Splits a core VIDEO (from Load Video or Create Video) into an IMAGE batch, its fps and "
                        "the matching audio (silent 16 kHz audio when the video has none), with the same frame "
                        "selection as 'Load Video (Frames)'.",
            inputs=[
                io.Video.Input("video", tooltip="A core VIDEO value."),
                *_frame_select_inputs(),
            ],
            outputs=_frame_outputs(),
        )

    @classmethod
    def execute(cls, video, start_frame, frame_cap, select_every_nth) -> io.NodeOutput:
        if video is None:
            raise ValueError("Video To Frames: no VIDEO connected")
        components = video.get_components()
        images = components.images
        total = int(images.shape[0]) if images.ndim == 4 else 0
        start, step, cap = int(start_frame), int(select_every_nth), int(frame_cap)
        n = _select_frames(total, start, cap, step)
        if n == 0:
            raise ValueError(f"Video To Frames: no frames selected (the video has {total} frames; "
                             f"start_frame={start}, select_every_nth={step}, frame_cap={cap})")
        src_fps = media.as_fraction(components.frame_rate or 1)
        frames = images[start:start + n * step:step].contiguous()
        fps = src_fps / step
        audio = components.audio
        if audio is not None and audio.get("waveform") is not None and audio["waveform"].shape[-1] > 0:
            waveform, sr = audio["waveform"], int(audio["sample_rate"])
            first = media.samples_for_frames(start, src_fps, sr)
            length = media.samples_for_frames(n, fps, sr)
            audio = media.make_audio(media.fit_length(waveform[..., first:first + length], length).float(), sr)
        else:
            audio = _silent_for(n, fps)
        return io.NodeOutput(frames, float(fps), audio, n)


# ---------------------------------------------------------------------------------------------------------------------
class FramesToVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_FramesToVideo",
            display_name="Frames To Video",
            category=CAT_MEDIA,
            description="Makes a core VIDEO from frames, fps and optional audio, ready for core 'Save Video': odd "
                        "widths/heights are made even (h264 yuv420p needs it) and the audio is trimmed or "
                        "zero-padded to the video's duration (first batch item, mono/stereo, AAC sample rate).",
            inputs=[
                io.Image.Input("images", tooltip="Frames as an IMAGE batch [frames, H, W, 3]."),
                io.Float.Input("fps", default=25.0, min=0.01, max=240.0, step=0.01,
                               tooltip="Frame rate of the video."),
                io.Audio.Input("audio", optional=True,
                               tooltip="Soundtrack (optional). Any sample rate and channel count; fitted to the "
                                       "video."),
                io.Combo.Input("even_size", options=list(EVEN_MODES), default="pad",
                               tooltip="For odd widths/heights: pad = repeat the last row/column, crop = drop it, "
                                       "none = keep (core Save Video then fails on odd sizes)."),
                io.Boolean.Input("fit_audio", default=True,
                                 tooltip="Trim or zero-pad the audio to exactly the video's duration. Off: keep its "
                                         "length (Save Video still cuts it at the video's end)."),
            ],
            outputs=[io.Video.Output(display_name="video",
                                     tooltip="The VIDEO, for core Save Video or Get Video Components.")],
        )

    @classmethod
    def execute(cls, images, fps, even_size, fit_audio, audio=None) -> io.NodeOutput:
        parts = media.frames_to_components(images, fps, audio, even=even_size, fit_audio=bool(fit_audio))
        return io.NodeOutput(InputImpl.VideoFromComponents(Types.VideoComponents(**parts)))


# ---------------------------------------------------------------------------------------------------------------------
GRID_SLOTS = 8  # image inputs of Labelled Image Grid


class LabelledImageGrid(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_LabelledImageGrid",
            display_name="Labelled Image Grid",
            category=CAT_MEDIA,
            description="Puts up to 8 images side by side in one image, each with a caption under it, to compare "
                        "results (e.g. model versions). Every image is fitted into the size of image_1 (aspect "
                        "ratio kept); from a batch, the first image is used.",
            inputs=[io.Image.Input("image_1", tooltip="First panel (top left); its size is every panel's size.")]
            + [io.Image.Input(f"image_{i}", optional=True,
                              tooltip=f"Panel {i} (optional; panels keep their input order, row by row).")
               for i in range(2, GRID_SLOTS + 1)]
            + [io.String.Input("labels", multiline=True, default="",
                               tooltip="One caption per line, in the order of the connected images (empty lines "
                                       "leave a panel without caption)."),
               io.Int.Input("columns", default=4, min=1, max=GRID_SLOTS,
                            tooltip="Panels per row (at most the number of connected images)."),
               io.Int.Input("label_height", default=48, min=0, max=256,
                            tooltip="Height of the caption bar under each panel, in pixels (0: no captions).")],
            outputs=[io.Image.Output(display_name="image",
                                     tooltip="The grid: rows x (panel height + label_height) by columns x panel "
                                             "width.")],
        )

    @classmethod
    def execute(cls, image_1, labels="", columns=4, label_height=48, **more) -> io.NodeOutput:
        from ..media.grid import labelled_grid

        images = [image_1] + [more[f"image_{i}"] for i in range(2, GRID_SLOTS + 1)
                              if more.get(f"image_{i}") is not None]
        captions = [line.strip() for line in str(labels).splitlines()]
        return io.NodeOutput(labelled_grid([img[0] for img in images], captions, int(columns), int(label_height)))


NODES = [LoadAudio, PrepareAudio, LoadVideoFrames, VideoToFrames, FramesToVideo, LabelledImageGrid]
