"""Driving-signal extraction for the animation models (pose images, expression codes, ...).

Light to import: sub-packages load their numeric dependencies (OpenCV, onnxruntime, torch modules) only when used.
"""
