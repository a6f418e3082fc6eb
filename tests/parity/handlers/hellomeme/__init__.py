"""HelloMeme parity handlers: modules (blocks, adapters, control), denoisers and pipelines, geometry."""
import importlib

for _name in ("blocks", "control", "adapters", "denoise", "pipelines", "geometry"):
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as e:  # a part not written yet: its components stay unhandled (and fail)
        if e.name != f"{__name__}.{_name}":
            raise
