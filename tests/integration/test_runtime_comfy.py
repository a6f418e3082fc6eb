"""ComfyRuntime inside a real ComfyUI process: ModelPatcher + load_models_gpu, dtype policy, progress, interrupts."""
from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

from .comfy import ROOT, comfy_python

SCRIPT = textwrap.dedent('''
    import importlib.util, sys
    sys.argv = ["main.py", "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import torch
    import comfy.model_management as mm
    spec = importlib.util.spec_from_file_location("pa", sys.argv_root + "/__init__.py",
                                                  submodule_search_locations=[sys.argv_root])
    pa = importlib.util.module_from_spec(spec); sys.modules["pa"] = pa; spec.loader.exec_module(pa)
    from pa.runtime import get_runtime
    from pa.runtime.comfy import ComfyRuntime
    rt = get_runtime(node_id="7")
    assert isinstance(rt, ComfyRuntime), type(rt)
    assert rt.device.type == "cpu" and rt.dtype("auto") == torch.float32 and rt.dtype("bf16") == torch.bfloat16
    class ReadOnlyDevice(torch.nn.Linear):  # like diffusers/transformers models
        @property
        def device(self):
            return self.weight.device

    h = rt.manage("toy", ReadOnlyDevice(64, 64), torch.float32)
    import comfy.model_patcher
    from pa.runtime.comfy import whole_model_patcher
    patcher = h.extra["patcher"]
    assert type(patcher) is whole_model_patcher() and isinstance(patcher, comfy.model_patcher.ModelPatcher)
    assert type(patcher.clone()) is type(patcher), "a clone must unload whole too"
    rt.load([h, h])  # the same model twice in one stage: loaded once
    assert sum(m is patcher for m in mm.loaded_models()) == 1, "not loaded (once) through model management"
    rt.offload([h])  # after a stage: stays until ComfyUI needs the room (smart memory is on by default)
    assert any(m is patcher for m in mm.loaded_models()), "offload evicted eagerly with smart memory on"
    mm.DISABLE_SMART_MEMORY = True  # --disable-smart-memory: the user asked for aggressive freeing
    try:
        rt.offload([h])
    finally:
        mm.DISABLE_SMART_MEMORY = False
    assert not any(m is patcher for m in mm.loaded_models()), "still loaded after offload with smart memory off"
    rt.load([h])
    assert patcher.partially_unload(patcher.offload_device, 1) == patcher.model_size(), "not reported freed whole"
    assert patcher.loaded_size() == 0 and h.device == patcher.offload_device
    with rt.progress(3) as bar:
        bar.update(1)
    import comfy.utils
    seen = []
    hook = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, **kw: seen.append((value, total)))
    try:
        with rt.progress(3) as bar:  # a loop that finds 2 more units (an identity guard's retry) ends at 100%
            bar.update(2)
            bar.grow(2)
            bar.update(3)
    finally:
        comfy.utils.set_progress_bar_global_hook(hook)
    # (newer ComfyUI throttles the updates between the first and the final one)
    assert seen[0] == (2, 3) and seen[-1] == (5, 5) and all(v < t for v, t in seen[:-1]), seen
    mm.interrupt_current_processing(True)
    try:
        with rt.progress(3) as bar:
            bar.update(1)
        raise SystemExit("progress update did not honour the interrupt")
    except mm.InterruptProcessingException:
        pass
    print("COMFY RUNTIME OK")
''')


def test_comfy_runtime_under_model_management(tmp_path, comfy_install):
    comfy = Path(comfy_install)
    script = tmp_path / "check.py"
    script.write_text(SCRIPT.replace("sys.argv_root", repr(str(ROOT))))
    r = subprocess.run([comfy_python(comfy), str(script)], cwd=comfy, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(comfy)))
    assert "COMFY RUNTIME OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
