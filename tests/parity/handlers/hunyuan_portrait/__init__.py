"""HunyuanPortrait parity handlers, one module per area."""
import importlib
from pathlib import Path

for _name in ("motion", "appearance", "denoiser", "pipeline"):
    if (Path(__file__).parent / f"{_name}.py").is_file():
        importlib.import_module(f"{__name__}.{_name}")
