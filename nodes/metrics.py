"""Quality metric nodes: identity, pose, expression, mouth, flicker, seams and lip sync of an animated clip.

Thin adapters over :mod:`..metrics` (imported when a node runs). Every node returns the mean (FLOAT), the per-frame
values (a FLOAT list), a plot (IMAGE, also shown on the node) and a JSON summary (STRING); it is an output node, so
it runs even when nothing is connected to it, and the summary also goes into the node's UI output under
``pa_metrics``, where ``tools/queue_batch.py --summary`` collects it for each job.
"""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..metrics.constants import COMPARE_MODES, FLOW_SIZE
from .common import CATEGORY, PREFIX, FaceDetector, node_runtime

CAT_METRICS = f"{CATEGORY}/Metrics"

UI_KEY = "pa_metrics"  # the key of a metric node's summary in the prompt history (read by tools/queue_batch.py)


def _images(images, name: str):
    if images is None or images.ndim != 4 or images.shape[0] == 0:
        shape = None if images is None else tuple(images.shape)
        raise ValueError(f"input '{name}' must be a non-empty IMAGE batch [B, H, W, 3], got shape {shape}")
    return images


def _outputs(what: str) -> list:
    return [
        io.Float.Output(display_name="mean", tooltip=f"Mean {what} over the measured frames (NaN when nothing "
                                                     "could be measured)."),
        io.Float.Output(display_name="per_frame", is_output_list=True,
                        tooltip=f"{what[0].upper() + what[1:]} per frame (per boundary for the seam score) as a list "
                                "of FLOATs, NaN where it was not measured (no face)."),
        io.Image.Output(display_name="plot", tooltip="The values over the clip drawn as a chart, with the mean "
                                                     "(dashed) and unmeasured frames (red ticks)."),
        io.String.Output(display_name="summary", tooltip="JSON: the metric, its unit, which way is better, mean, "
                                                         "min, max, per-frame values and details; tools/queue_batch.py "
                                                         "--summary collects it per job."),
    ]


def _detector_input():
    return FaceDetector.Input("detector", optional=True,
                              tooltip="A face detector from 'Face Detector (MediaPipe)'. Not connected: MediaPipe with "
                                      "default settings (auto backend, no download).")


def _fps_inputs():
    return [
        io.Float.Input("fps", default=0.0, min=0.0, max=240.0, step=0.001,
                       tooltip="Frame rate of 'images' (e.g. a sampler's fps output). With 'driving_fps' the frames "
                               "are paired by time; 0 pairs frame i with driving frame i."),
        io.Float.Input("driving_fps", default=0.0, min=0.0, max=240.0, step=0.001,
                       tooltip="Frame rate of 'driving' (Load Video (Frames)'s fps output). 0 pairs by index."),
    ]


def _result(cls, series, plotted=None) -> io.NodeOutput:
    """The node's outputs from a metric series (``plotted``: another series to draw, default the same); the UI output
    shows the plot on the node (a temp PNG, as Preview Image does) and carries the summary under :data:`UI_KEY`."""
    import json

    import torch
    from comfy_api.v0_0_2 import ui

    from ..metrics.plot import plot_series

    plot = torch.from_numpy(plot_series(plotted or series))[None]
    data = series.to_dict()
    shown = {"images": ui.PreviewImage(plot, cls=cls).as_dict()["images"], UI_KEY: [data]}
    return io.NodeOutput(series.mean, series.floats() or [float("nan")], plot, json.dumps(data), ui=shown)


class IdentityMetric(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_IdentityMetric",
            display_name="Identity Similarity (ArcFace)",
            category=CAT_METRICS,
            description="How much each frame's face is still the reference person: ArcFace cosine similarity "
                        "(HunyuanPortrait's arcface.onnx) of every frame's face to the reference face, both aligned "
                        "by MediaPipe landmarks. Higher is better; different people score far lower.",
            inputs=[
                io.Image.Input("images", tooltip="The frames to score (an animation's output, crops or full "
                                                 "frames)."),
                io.Image.Input("reference", tooltip="The reference portrait (several frames: their mean embedding)."),
                io.Boolean.Input("download", default=True,
                                 tooltip="Fetch arcface.onnx (HunyuanPortrait's identity network, from the Hugging Face "
                                         "repository FoivosPar/Arc2Face) into models/portrait_animation/"
                                         "hunyuan_portrait/ when it is missing. Off: the error says where it goes."),
                _detector_input(),
            ],
            outputs=_outputs("identity similarity"),
            is_output_node=True,
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, images, reference, download, detector=None) -> io.NodeOutput:
        from ..metrics.identity import identity_similarity, load_arcface

        images, reference = _images(images, "images"), _images(reference, "reference")
        rt = node_runtime(cls)
        encoder = load_arcface(download=download, device=rt.device.type if rt.device.type == "cuda" else "cpu")
        with rt.progress(len(images), desc="identity similarity") as p:
            series = identity_similarity(images, reference, encoder, detector, progress=p.update)
        return _result(cls, series)


def _driver_schema(node: str, name: str, description: str, what: str, extra: list):
    return io.Schema(
        node_id=f"{PREFIX}_{node}",
        display_name=name,
        category=CAT_METRICS,
        description=description,
        inputs=[
            io.Image.Input("images", tooltip="The animated frames to score."),
            io.Image.Input("driving", tooltip="The driving video's frames (or a ground-truth video) the animation "
                                              "should follow."),
            *_fps_inputs(),
            *extra,
            _detector_input(),
        ],
        outputs=_outputs(what),
        is_output_node=True,
        hidden=[io.Hidden.unique_id],
    )


def _driver_metric(cls, measure, desc: str, images, driving, fps, driving_fps, detector, *options) -> io.NodeOutput:
    """Run ``measure(images, driving, detector, fps, driving_fps, *options, progress=...)`` (a
    :mod:`..metrics.face_motion` function: both clips go through the face tools) and return the node's outputs."""
    images, driving = _images(images, "images"), _images(driving, "driving")
    with node_runtime(cls).progress(len(images) + len(driving), desc=desc) as p:
        return _result(cls, measure(images, driving, detector, fps, driving_fps, *options, progress=p.update))


def _compare_input(default: str):
    return io.Combo.Input("compare", options=list(COMPARE_MODES), default=default,
                          tooltip="relative: compare how each face moves from its first measured frame (the driver "
                                  "is another person: their resting faces differ). absolute: compare the shapes as "
                                  "they are (the driver is the same person, or a ground-truth video).")


class PoseMetric(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _driver_schema(
            "PoseMetric", "Head Pose Distance",
            "How closely the head follows the driver's head: mean absolute pitch/yaw/roll difference in degrees per "
            "frame, from MediaPipe landmarks and solvePnP (HelloMeme's approximate head pose). Lower is better.",
            "head pose distance (degrees)", [])

    @classmethod
    def execute(cls, images, driving, fps, driving_fps, detector=None) -> io.NodeOutput:
        from ..metrics.face_motion import pose_distance

        return _driver_metric(cls, pose_distance, "head pose distance", images, driving, fps, driving_fps, detector)


class ExpressionMetric(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _driver_schema(
            "ExpressionMetric", "Expression Distance",
            "How closely the expression follows the driver's: seven landmark ratios (mouth opening, width and "
            "corners, each eye's openness, each brow's height) in inter-ocular units, L2 distance per frame. Lower "
            "is better.", "expression distance", [_compare_input("relative")])

    @classmethod
    def execute(cls, images, driving, fps, driving_fps, compare, detector=None) -> io.NodeOutput:
        from ..metrics.face_motion import expression_distance

        return _driver_metric(cls, expression_distance, "expression distance", images, driving, fps, driving_fps,
                              detector, compare)


class MouthMetric(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _driver_schema(
            "MouthMetric", "Mouth Landmark Distance",
            "Mouth landmark distance (LMD): the 40 MediaPipe lip points of each frame against the driving (or "
            "ground-truth) frame, both in the face's eye frame, in percent of the inter-ocular distance. Lower is "
            "better.", "mouth landmark distance (% of the inter-ocular distance)", [_compare_input("absolute")])

    @classmethod
    def execute(cls, images, driving, fps, driving_fps, compare, detector=None) -> io.NodeOutput:
        from ..metrics.face_motion import mouth_distance

        return _driver_metric(cls, mouth_distance, "mouth landmark distance", images, driving, fps, driving_fps,
                              detector, compare)


def _flow_size_input():
    return io.Int.Input("flow_size", default=FLOW_SIZE, min=64, max=1024, step=32,
                        tooltip="The frames are resized to this many pixels on the long side for the optical flow "
                                "(larger is slower and sees finer flicker).")


class FlickerMetric(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_FlickerMetric",
            display_name="Temporal Flicker",
            category=CAT_METRICS,
            description="Frame-to-frame change that motion does not explain: each frame is predicted from the "
                        "previous one with Farneback optical flow, and the remaining difference (8-bit levels, "
                        "occlusions left out) is the warp error. Lower is steadier.",
            inputs=[io.Image.Input("images", tooltip="The frames of a video (at least two)."), _flow_size_input()],
            outputs=_outputs("warp error (8-bit levels)"),
            is_output_node=True,
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, images, flow_size) -> io.NodeOutput:
        from ..metrics.temporal import flicker

        images = _images(images, "images")
        with node_runtime(cls).progress(max(1, len(images) - 1), desc="flicker") as p:
            return _result(cls, flicker(images, flow_size, progress=p.update))


class SeamMetric(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_SeamMetric",
            display_name="Seam Score (window boundaries)",
            category=CAT_METRICS,
            description="Jumps where windows or clips meet: the warp error (optical flow) at each boundary frame "
                        "over the median warp error inside the segments around it. 1 means no seam; a visible jump "
                        "scores several times that.",
            inputs=[
                io.Image.Input("images", tooltip="The frames of a video made of windows or clips."),
                io.String.Input("boundaries", default="", multiline=False,
                                tooltip="Frames where a new window or clip starts, e.g. '16, 32, 48'. Added to the "
                                        "ones from 'segment_length'."),
                io.Int.Input("segment_length", default=16, min=0, max=10000,
                             tooltip="A boundary every this many frames (MEMO: its clip_length, 16 by default; "
                                     "HelloMeme v1/v2: 8, the step of their 12-frame windows). HunyuanPortrait "
                                     "shifts its windows every step: no fixed boundary. 0: only 'boundaries'."),
                _flow_size_input(),
            ],
            outputs=_outputs("seam score (boundary jump / jumps inside the segments)"),
            is_output_node=True,
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, images, boundaries, segment_length, flow_size) -> io.NodeOutput:
        from ..metrics.series import parse_boundaries
        from ..metrics.temporal import seam_scores, seam_transitions

        images = _images(images, "images")
        bounds = parse_boundaries(boundaries, len(images), segment_length)
        with node_runtime(cls).progress(max(1, len(images) - 1), desc="seam score") as p:
            series = seam_scores(images, bounds, flow_size, progress=p.update)
        return _result(cls, series, seam_transitions(series))


class LipSyncMetric(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_LipSyncMetric",
            display_name="Lip Sync (SyncNet)",
            category=CAT_METRICS,
            description="How well the mouth follows the speech: SyncNet (joonson/syncnet_python's syncnet_v2.model) "
                        "embeds 5-frame mouth windows and 0.2 s of audio and searches offsets of +-15 frames; the "
                        "confidence (LSE-C, higher is better) is the median minus the minimum mean distance, the "
                        "summary adds the AV offset and the minimum distance (LSE-D, lower is better). Needs "
                        "models/portrait_animation/metrics/syncnet_v2.model (not downloaded).",
            inputs=[
                io.Image.Input("images", tooltip="The talking frames to score (an animation's output; full frames or "
                                                 "face crops). They are resampled to 25 fps by time."),
                io.Float.Input("fps", default=25.0, min=1.0, max=240.0, step=0.001,
                               tooltip="Frame rate of 'images' (the sampler's fps output)."),
                io.Audio.Input("audio", tooltip="The speech the frames should follow (any rate and channels: made "
                                                "16 kHz mono), starting with the first frame."),
                _detector_input(),
            ],
            outputs=_outputs("lip-sync confidence"),
            is_output_node=True,
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, images, fps, audio, detector=None) -> io.NodeOutput:
        from ..metrics.syncnet import find_weights, lip_sync, load_syncnet, progress_steps

        images = _images(images, "images")
        if fps <= 0:
            raise ValueError("input 'fps' must be the frame rate of 'images' (e.g. 25), got 0")
        rt = node_runtime(cls)
        model = load_syncnet(find_weights(), device=rt.device)
        with rt.progress(progress_steps(len(images), fps), desc="lip sync") as p:
            series = lip_sync(images, fps, audio, model, detector, progress=p.update)
        return _result(cls, series)


NODES = [IdentityMetric, PoseMetric, ExpressionMetric, MouthMetric, FlickerMetric, SeamMetric, LipSyncMetric]
