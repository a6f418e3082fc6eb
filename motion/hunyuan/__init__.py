"""HunyuanPortrait's driving-motion encoders: everything between the driving crops and the 64 x 1024 motion tokens.

Modules (import the one you need; nothing heavy happens at package import):

* :mod:`.expression`: the coarse expression encoder (ResNet-50 with GroupNorm(1, C), ``expression.pth``), 512-d.
* :mod:`.head_pose`: the head-pose net (ResNet-18 with GroupNorm(32, C), ``headpose.pth``), Euler angles.
* :mod:`.resnet`: the GroupNorm ResNet backbone and blocks both encoders are built from.
* :mod:`.intensity`: head / expression intensity ids from 5-point landmarks, per chunk of driving frames.
* :mod:`.refiner`: the intensity-aware motion refiner (AdaLN Perceiver, ``motion_proj.pth``), 64 x 1018 per frame.
* :mod:`.tokens`: per-frame motion tokens = [refiner 1018 | rotation 3 | 0 0 0].
* :mod:`.loading`: loaders of the three ``.pth`` files through the pack's loading policy.
"""
