"""The CPU-independent bicubic resize of HelloMeme's pre-processing (motion/hellomeme/cubic_resize.py).

The exact-pixel check against the original is the parity suite (hellomeme/geom_crop_and_resize and geom_face_parts);
these tests pin what must hold on any machine: OpenCV's bicubic within one grey level, the same pixels whatever
IPP kernel level OpenCV picks on this CPU, and the shapes OpenCV accepts.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from portrait_animation.motion.hellomeme.cubic_resize import cubic_taps, resize_cubic_u8  # noqa: E402

PACK = Path(__file__).resolve().parents[1]


def _images(seed=0):
    rng = np.random.default_rng(seed)
    for src, dst in [((150, 140), (512, 512)), ((300, 260), (224, 224)), ((97, 131), (220, 300)), ((64, 64), (64, 64))]:
        img = rng.integers(0, 256, (*src, 3), dtype=np.uint8)
        yield cv2.GaussianBlur(img, (3, 3), 0), (dst[1], dst[0])


def test_matches_opencv_bicubic_within_one_level():
    changed = total = 0
    for img, size in _images():
        ours, ref = resize_cubic_u8(img, size), cv2.resize(img, size, interpolation=cv2.INTER_CUBIC)
        assert ours.shape == ref.shape and ours.dtype == np.uint8
        diff = np.abs(ours.astype(int) - ref.astype(int))
        assert diff.max() <= 1
        changed += int((diff > 0).sum())
        total += diff.size
    assert changed <= total * 1e-4, f"{changed} of {total} pixels differ from OpenCV's bicubic"


def test_weights_sum_to_one_and_taps_stay_inside():
    idx, w = cubic_taps(131, 300)
    assert idx.shape == w.shape == (300, 4) and idx.min() == 0 and idx.max() == 130
    np.testing.assert_allclose(w.astype(np.float64).sum(1), 1.0, atol=1e-6)
    assert (w[:, 1] > 0.5).sum() + (w[:, 2] > 0.5).sum() >= 300  # the two middle taps carry the weight


def test_grayscale_and_single_channel():
    img = np.random.default_rng(1).integers(0, 256, (40, 50), dtype=np.uint8)
    assert resize_cubic_u8(img, (80, 70)).shape == (70, 80)
    np.testing.assert_array_equal(resize_cubic_u8(img, (80, 70)), resize_cubic_u8(img[..., None], (80, 70))[..., 0])
    with pytest.raises(ValueError, match="uint8"):
        resize_cubic_u8(img.astype(np.float32), (80, 70))


_PROBE = """
import importlib.util, json, sys, numpy as np
spec = importlib.util.spec_from_file_location("cubic_resize", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
rng = np.random.default_rng(5)
img = rng.integers(0, 256, (150, 140, 3), dtype=np.uint8)
print(json.dumps(mod.resize_cubic_u8(img, (512, 512)).astype(int).sum(axis=(0, 2)).tolist()))
"""


@pytest.mark.parametrize("level", ["sse42", "avx2"])
def test_same_pixels_whatever_ipp_kernel_opencv_picks(level):
    def run(env_level):
        env = dict(os.environ)
        env.pop("OPENCV_IPP", None)
        if env_level:
            env["OPENCV_IPP"] = env_level
        out = subprocess.run([sys.executable, "-c", _PROBE, str(PACK / "motion" / "hellomeme" / "cubic_resize.py")], env=env,
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert run(level) == run(None)
