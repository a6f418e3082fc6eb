"""Option names and defaults of the face package (no heavy imports: the node module reads these at import time)."""

BACKENDS = ("auto", "bundled", "task")          # FaceDetector backends
ON_MISSING = ("error", "fill_nearest")           # what to do with frames without the face
STABILITY_MODES = ("smooth", "fixed", "per_frame")
PAD_MODES = ("replicate", "black", "reflect")
MASK_SHAPES = ("rounded_rectangle", "ellipse", "rectangle")
FEATHER_UNITS = ("fraction", "pixels")
FRAME_RULES = ("loop", "clamp")

DEFAULT_CROP_SIZE = 512
DEFAULT_SCALE = 2.0        # box side / larger side of the landmarks' extent (forehead to chin, ear to ear)
DEFAULT_OFFSET_Y = -0.1    # box centre shift in landmark extents (negative: up, towards the hair)
DEFAULT_WINDOW = 9         # frames in the "smooth" moving average
DEFAULT_FEATHER = 0.1      # fraction of the box side
