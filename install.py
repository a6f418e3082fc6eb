"""Run by ComfyUI-Manager after `pip install -r requirements.txt`: add onnxruntime only when no build is present.

onnxruntime and onnxruntime-gpu provide the same module and break each other when both are installed, so the pack
never lists either in requirements.txt. If you want GPU inference for the ONNX face tools, install
onnxruntime-gpu yourself; this script then does nothing.
"""
import importlib.metadata
import subprocess
import sys


def installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    builds = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-silicon")
    if not any(installed(b) for b in builds):
        subprocess.check_call([sys.executable, "-m", "pip", "install", "onnxruntime>=1.17"])
