"""MEMO parity handlers: networks (``nets``), the audio path (``audio``) and the sampler/pipeline (``sampler``)."""
import importlib

for _name in ("nets", "audio", "sampler"):
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as e:  # a part not written yet: its components stay unhandled (and fail)
        if e.name != f"{__name__}.{_name}":
            raise
