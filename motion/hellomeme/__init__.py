"""HelloMeme driving conditions: the official face toolkit (detector, 222 landmarks, 3DMM, ARKit) run with
onnxruntime, the geometry around it, the pose image, the PD-FGC expression encoder, and one entry point that turns a
reference image plus driving frames into the pipeline's drive parameters.

Modules (import the one you need; nothing heavy happens at package import):

* :mod:`.geometry`: crops, alignment warps, Umeyama similarity, 3DMM translation conversion, coefficient tokens.
* :mod:`.pose_image`: the control "pose image" (projected, coloured square) drawn from head angles/translations.
* :mod:`.toolkit`: onnxruntime sessions of the official ONNX files + tracking; approximate MediaPipe head pose.
* :mod:`.pdfgc`: the PD-FGC ``FanEncoder`` (548-d expression code) as a torch module.
* :mod:`.conditions`: :func:`~.conditions.hellomeme_conditions` -> :class:`~.conditions.HelloMemeConditions`.
"""
