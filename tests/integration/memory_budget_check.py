"""Two of the pack's registered models alternated under ComfyUI's memory manager with a tiny memory budget.

    cd <ComfyUI> && <ComfyUI python> <pack>/tests/integration/memory_budget_check.py --device cpu|cuda [--control]

Needs only torch, a ComfyUI source tree (the working directory, with its requirements) and the pack. It registers
two small models through :class:`runtime.comfy.ComfyRuntime`, sets a budget that holds one of them but not both,
and loads and runs them in turn, then together. Loading one makes ComfyUI free room with
``LoadedModel.model_unload(memory_to_free)``, which for a plain ``ModelPatcher`` moves only *some* submodules to the
offload device (a partial unload) and leaves the model split. After every load the check asserts that each model is
wholly on one device, that the model just loaded is wholly on the accelerator, and that its forward pass runs and
gives the same numbers as before. It prints one ``MEMORY BUDGET {json}`` line and exits 0 when every check held.

``--device cuda``: a real GPU; the budget is enforced through ``get_free_memory`` as ``budget - bytes allocated``
(real allocations), and a split model fails its forward pass with torch's own device-mismatch error.
``--device cpu``: no GPU needed. The "accelerator" is ``torch.device("cpu", 0)``, which ComfyUI's memory manager
treats as a device of its own (``!= torch.device("cpu")``) while tensors stay in host memory; where each submodule
lives is tracked through ``Module.to`` calls, the budget is computed from that tracking, and a forward pass through
a submodule left on the offload device raises the same error torch raises on a GPU.
``--control``: register the models with ComfyUI's plain ``ModelPatcher`` instead of the pack's; the check then
expects to *see* a split (proof that the scenario really makes ComfyUI unload partially) and exits 0 if it does.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]
LAYERS = 6  # Linear layers per model: a partial unload moves some of them and leaves the others


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--control", action="store_true", help="use ComfyUI's plain ModelPatcher (expects a split)")
    p.add_argument("--rounds", type=int, default=4, help="A/B alternations")
    return p.parse_args()


def import_pack():
    spec = importlib.util.spec_from_file_location("pa", PACK_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(PACK_ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["pa"] = pack
    spec.loader.exec_module(pack)
    return pack


def main() -> int:
    opts = parse_args()
    sys.argv = ["main.py"] + (["--cpu"] if opts.device == "cpu" else [])
    # the script's own folder holds the test suite's comfy.py helper: ComfyUI's package must win
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [os.getcwd()] + [p for p in sys.path if p and Path(p).resolve() != Path(here)]
    import comfy.options

    comfy.options.enable_args_parsing()
    import torch

    import comfy.model_management as mm
    import comfy.model_patcher

    import_pack()
    import pa.runtime.comfy as pack_comfy

    if opts.device == "cuda" and not torch.cuda.is_available():
        print("MEMORY BUDGET SKIP: no CUDA device")
        return 0

    width = 256 if opts.device == "cpu" else 1024
    model_bytes = LAYERS * (width * width + width) * 4          # fp32 weights and biases
    budget = int(model_bytes * 1.6)                              # one model fits, two do not
    mm.minimum_inference_memory = lambda: model_bytes // 20      # ComfyUI's 0.8 GB floor would evict everything
    mm.extra_reserved_memory = lambda: 0
    mm.EXTRA_RESERVED_VRAM = 0
    original_free = mm.get_free_memory
    modules: dict[str, torch.nn.Module] = {}

    if opts.device == "cpu":
        accel = torch.device("cpu", 0)
        original_to = torch.nn.Module.to

        def tracked_to(self, *args, **kwargs):  # records where ComfyUI moves each submodule
            out = original_to(self, *args, **kwargs)
            device = torch._C._nn._parse_to(*args, **kwargs)[0]
            if device is not None:
                for m in self.modules():
                    m._where = torch.device(device)
            return out

        torch.nn.Module.to = tracked_to
        mm.get_torch_device = lambda: accel

        def where(module: torch.nn.Module) -> set:
            return {getattr(m, "_where", torch.device("cpu")) for m in module.modules()
                    if isinstance(m, torch.nn.Linear)}

        def used_bytes() -> int:
            return sum(4 * sum(p.numel() for p in m.parameters()) for mod in modules.values() for m in mod.modules()
                       if isinstance(m, torch.nn.Linear) and getattr(m, "_where", None) == accel)

        def first_device(module: torch.nn.Module) -> torch.device:
            return next(getattr(m, "_where", torch.device("cpu")) for m in module.modules()
                        if isinstance(m, torch.nn.Linear))

        def check_device(module, inputs):  # what a GPU does when a weight is not where the input is
            if getattr(module, "_where", None) != feeding["device"]:
                raise RuntimeError("Expected all tensors to be on the same device, but found at least two devices, "
                                   f"{feeding['device']} and {getattr(module, '_where', 'cpu')} (simulated)")
    else:
        accel = mm.get_torch_device()
        torch.backends.cuda.matmul.allow_tf32 = False  # the numbers are compared with the CPU's
        torch.backends.cudnn.allow_tf32 = False
        # the first matmul allocates cuBLAS's workspace, which stays: part of the baseline, not of the budget
        torch.nn.functional.linear(torch.randn(2, width, device=accel), torch.randn(width, width, device=accel))
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated(accel)

        def where(module: torch.nn.Module) -> set:
            return {p.device for p in module.parameters()}

        def used_bytes() -> int:
            return torch.cuda.memory_allocated(accel) - baseline

        def first_device(module: torch.nn.Module) -> torch.device:
            return next(module.parameters()).device

        check_device = None

    def fake_free(dev=None, torch_free_too=False):
        if dev is not None and torch.device(dev) == accel:
            free = max(0, budget - used_bytes())
            return (free, free) if torch_free_too else free
        return original_free(dev, torch_free_too)

    mm.get_free_memory = fake_free

    patcher_class = comfy.model_patcher.ModelPatcher if opts.control else pack_comfy.whole_model_patcher()
    partial_calls = []
    original_partial = patcher_class.partially_unload

    def counting_partial(self, *args, **kwargs):
        partial_calls.append(args[1] if len(args) > 1 else kwargs.get("memory_to_free"))
        return original_partial(self, *args, **kwargs)

    patcher_class.partially_unload = counting_partial
    if opts.control:
        pack_comfy.whole_model_patcher = lambda: comfy.model_patcher.ModelPatcher

    rt = pack_comfy.ComfyRuntime()
    assert rt.device == accel, (rt.device, accel)
    torch.manual_seed(0)
    handles, inputs, expected = {}, {}, {}
    for name in ("A", "B"):
        module = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(LAYERS)])
        x = torch.randn(2, width)
        with torch.no_grad():
            expected[name] = module(x)
        if check_device is not None:
            for m in module.modules():
                if isinstance(m, torch.nn.Linear):
                    m.register_forward_pre_hook(check_device)
        handles[name] = rt.manage(f"budget.{name}", module, torch.float32)
        modules[name] = module
        inputs[name] = x

    events: list[dict] = []
    problems: list[str] = []
    feeding = {"device": accel}

    def run(name: str, device=None) -> None:
        """Forward pass with the input on ``device`` (default: the accelerator, as a stage after its load)."""
        feeding["device"] = device if device is not None else rt.device
        with torch.no_grad():
            try:
                out = handles[name].module(inputs[name].to(feeding["device"]))
            except RuntimeError as e:
                problems.append(f"{name} forward failed: {e}")
                return
        tol = 1e-5 if opts.device == "cpu" else 1e-3
        if not torch.allclose(out.cpu(), expected[name], atol=tol, rtol=tol):
            problems.append(f"{name} forward gave different numbers after moving")

    def check(step: str, loaded: list[str]) -> None:
        state = {n: sorted(str(d) for d in where(m)) for n, m in modules.items()}
        events.append({"step": step, "where": state, "partial_unloads": len(partial_calls)})
        for n, devices in state.items():
            if len(devices) != 1:
                problems.append(f"after {step}: model {n} is split across {devices}")
        for n in loaded:
            if state[n] != [str(accel)]:
                problems.append(f"after {step}: model {n} was just loaded but is on {state[n]}")

    for i in range(opts.rounds):
        for name in ("A", "B"):
            rt.load([handles[name]])
            check(f"round {i} load {name}", [name])
            run(name)
            rt.offload([handles[name]])  # after a stage: ComfyUI evicts when it needs the room
        # code that feeds a model on its own weights' device (MEMO's audio projection does) works on an evicted
        # model when the eviction was whole, and fails on a split one
        run("A", first_device(modules["A"]))
    rt.load([handles["A"], handles["B"]])  # a stage that uses both: one call
    check("load A+B together", ["A", "B"])
    run("A")
    run("B")

    split = any("split" in p for p in problems)
    summary = {"device": str(accel), "control": opts.control, "budget": budget, "model_bytes": model_bytes,
               "partial_unload_calls": len(partial_calls), "split_seen": split, "problems": problems,
               "comfyui": getattr(comfy.options, "__file__", ""), "events": events[-3:]}
    print("MEMORY BUDGET " + json.dumps(summary))
    if not partial_calls:
        print("the budget never made ComfyUI unload partially: the scenario tested nothing")
        return 1
    if opts.control:
        return 0 if split and any("forward failed" in p for p in problems) else 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
