"""The pack's denoiser step against the original implementation's, on the same small config, the same weights and the
same inputs: outputs checked equal within the parity tolerance, then timed interleaved (see ``_compare.py``).

    python benchmarks/_originals.py --child hunyuan_portrait ~/originals/HunyuanPortrait --repeats 5

The config and the weights are those of a parity case (``<parity root>/<family>/<case>``): the case's checkpoint
files are materialised in the official layout (the released key names), loaded by the pack's loaders as a download
would be, and by the original's own classes with ``load_state_dict(strict=True)``. Inputs are random at the sizes
given (``--frames``, ``--latent``), so the step can be timed at a size larger than the recorded case.

Each family is one :class:`Comparison` (``setup(tree, ckpt_dir, size) -> (pack_fn, original_fn, tolerance, shapes)``).
The originals' source trees are imported as they are, never edited; what they import that the pack's environment
lacks is shimmed here only (:func:`shim_missing`) or taken from a site folder given by ``ORIGINALS_SITE`` (default:
``<tree>/../site``, e.g. ``pip install --target ~/originals/site einops``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).parent))
from _common import import_pack  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------------
# importing an original tree
# ---------------------------------------------------------------------------------------------------------------------
def shim_missing(family: str) -> list[str]:
    """Stand-ins for optional packages the originals import at module level but do not use on this path (xformers:
    memory-efficient attention, never enabled here; torchvision: HelloMeme imports a ResNet block it does not use in
    the denoiser). Returns what was shimmed."""
    import importlib.machinery

    shimmed = []
    try:
        import xformers  # noqa: F401
    except ImportError:
        xf = types.ModuleType("xformers")
        xf.ops = types.ModuleType("xformers.ops")
        xf.__spec__ = importlib.machinery.ModuleSpec("xformers", None)
        xf.ops.__spec__ = importlib.machinery.ModuleSpec("xformers.ops", None)
        sys.modules["xformers"], sys.modules["xformers.ops"] = xf, xf.ops
        shimmed.append("xformers (empty module)")
    try:
        import torchvision  # noqa: F401
    except ImportError:
        if family != "hellomeme":
            return shimmed
        # diffusers decides once, at its import, that torchvision is absent: import it before the placeholder exists
        from diffusers import UNet2DConditionModel  # noqa: F401

        import torch

        tv = types.ModuleType("torchvision")
        tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
        for sub in ("models", "models.resnet", "transforms"):
            sys.modules[f"torchvision.{sub}"] = types.ModuleType(f"torchvision.{sub}")
            sys.modules[f"torchvision.{sub}"].__spec__ = importlib.machinery.ModuleSpec(f"torchvision.{sub}", None)
        sys.modules["torchvision"] = tv
        sys.modules["torchvision.models.resnet"].BasicBlock = type("BasicBlock", (torch.nn.Module,), {})
        shimmed.append("torchvision (BasicBlock placeholder)")
    return shimmed


def add_tree(tree: Path) -> None:
    site = Path(os.environ.get("ORIGINALS_SITE", tree.parent / "site"))
    if site.is_dir():
        sys.path.insert(0, str(site))
    sys.path.insert(0, str(tree))


# ---------------------------------------------------------------------------------------------------------------------
# families
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    family: str
    case: str                  # parity case giving the config and the weights
    step: str                  # what one timed call computes, in words
    setup: Callable            # (tree, ckpt_dir, case_dir, args) -> (pack_fn, original_fn, tolerance, shapes)
    sized: bool = False        # inputs drawn at --frames / --latent (else the case's recorded inputs)


def _hunyuan(tree: Path, ckpt: Path, case_dir: Path, args):
    import torch

    from portrait_animation.hunyuan_portrait import sampler as hp_sampler
    from portrait_animation.hunyuan_portrait import unet as hp_unet
    from src.models.condition.unet_3d_svd_condition_ip import UNet3DConditionSVDModel, init_ip_adapters

    case = json.loads((case_dir / "case.json").read_text())
    pack = hp_unet.load_unet(ckpt / "hyportrait/unet.pth", config=ckpt / "unet").eval()
    orig = UNet3DConditionSVDModel.from_config(UNet3DConditionSVDModel.load_config(str(ckpt / "unet")))
    init_ip_adapters(orig, [32], 1.0)
    orig.load_state_dict(torch.load(ckpt / "hyportrait/unet.pth", weights_only=True), strict=True)
    orig = orig.eval().requires_grad_(False)

    f, h = args.frames, args.latent
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, f, 4, h, h, generator=g) * 5                 # latent state
    image_latents = torch.randn(1, 4, h, h, generator=g)
    appearance = torch.randn(1, 64, 1024, generator=g)
    motion = torch.randn(1, f, 64, 1024, generator=g)
    pose = torch.cat([torch.randn(1, f, 320, h, h, generator=g)] * 3)
    sigma = torch.tensor(700.0)
    unet_input = hp_sampler.cfg_model_input(x / (sigma ** 2 + 1) ** 0.5, image_latents)   # (3, F, 8, h, w)
    app, mot = hp_sampler.cfg_context(appearance, motion)
    app_frames = app.unsqueeze(1).expand(-1, f, -1, -1).flatten(0, 1)                      # (3F, 64, 1024)
    ids = hp_sampler.added_time_ids(hp_sampler.SamplerSettings(fps=12.5, motion_bucket_id=0, noise_aug_strength=0.0),
                                    1)
    t = 0.25 * sigma.log()
    s = case["settings"]
    g1, g2 = s["guidance_appearance"], s["guidance_motion"]

    def run_pack():
        out = pack(unet_input, t, (app_frames, mot), ids, pose)
        return {"model_output": out, "guided": hp_sampler.three_branch_guidance(out, g1, g2)}

    def run_original():  # as one window of HunyuanLongSVDPipeline
        out = orig(unet_input, t, encoder_hidden_states=(app_frames, mot), pose_cond_fea=pose, added_time_ids=ids,
                   return_dict=False)[0]
        u, d, c = out.chunk(3)
        return {"model_output": out, "guided": u + g1 * (d - u) + g2 * (c - d)}

    tol = {k: case["tolerance"][k] for k in ("model_output", "guided")}
    shapes = {"unet_input": list(unet_input.shape), "config": "parity case unet_forward (SVD blocks, widths 320-320, "
                                                              "1 layer per block)"}
    return run_pack, run_original, tol, shapes


def _memo(tree: Path, ckpt: Path, case_dir: Path, args):
    """MEMO's Diffusion Net on the parity case ``diffusion_net_cfg`` (its config, weights and recorded inputs: CFG
    batch, reference features, audio and emotion): the three calls of the case in a row (temporal memory carried)
    are checked, then the step is timed as the sampler runs it: call 2 (a step after the first of a later clip: the
    memory carried from earlier clips is read, not changed, so every timed call does the same work), the pack with
    the clip's ``reference_cache`` (filled by the clip's first call, as in ``memo_sampler``), the original as its
    pipeline calls it. That is (S-1)/S of the S steps of every clip after the first. ``cold_call`` (in the row): call 0
    (a new clip: memory rebuilt from the past frames) without any cache, timed the same way."""
    import torch
    from safetensors.torch import load_file

    from memo.models.unet_3d import UNet3DConditionModel
    from portrait_animation.memo import loading

    case = json.loads((case_dir / "case.json").read_text())
    folder = ckpt / case["checkpoint"]["folder"]
    pack = loading.load_diffusion_net(folder).eval()
    orig = UNet3DConditionModel.from_pretrained(str(ckpt), subfolder=case["checkpoint"]["folder"],
                                                use_safetensors=True).eval().requires_grad_(False)
    from memo.models.attention_processor import MemoryLinearAttnProcessor

    for name, module in orig.named_modules():  # as the case was recorded: memory processors on the motion attention
        if "motion_modules" in name and hasattr(module, "set_processor"):
            module.set_processor(MemoryLinearAttnProcessor())
    x = load_file(str(case_dir / "inputs.safetensors"))

    def nest(prefix):  # "<prefix><level>.<block>.<layer>" -> {"down": [[t, ...], ...], "mid": ..., "up": ...}
        out = {"down": {}, "mid": {}, "up": {}}
        for name, t in x.items():
            if name.startswith(prefix):
                level, block, layer = name[len(prefix):].split(".")
                out[level].setdefault(int(block), {})[int(layer)] = t
        return {lv: [[b[j] for j in sorted(b)] for _, b in sorted(blocks.items())] for lv, blocks in out.items()}

    def wrap(ref):  # the original's transformer levels carry a list per layer (one entry per transformer block)
        return {lv: [[[t] if t.dim() == 3 else t for t in layers] for layers in blocks] for lv, blocks in ref.items()}

    calls = []
    for call in case["calls"]:
        i = call["index"]
        calls.append(dict(sample=x[f"call{i}.sample"], ref=nest(f"refset{call['refset']}."),
                          t=x.get(f"call{i}.timestep", torch.tensor(call["timestep"], dtype=torch.float32)),
                          audio=x[f"call{i}.audio"], emotion=x.get(f"call{i}.emotion", torch.tensor(call["emotion"])),
                          new=call["is_new_audio"], update=call["update_past_memory"]))
    text, uc = x["encoder_hidden_states"], x.get("uc_mask")

    def run_pack(which=(0,), cache=None):
        return {f"call{i}.noise_pred": pack(c["sample"], c["ref"], c["t"], text, c["audio"], c["emotion"], uc_mask=uc,
                                            is_new_audio=c["new"], update_past_memory=c["update"],
                                            reference_cache=cache)
                for i, c in ((i, calls[i]) for i in which)}

    def run_original(which=(0,)):
        return {f"call{i}.noise_pred": orig(c["sample"], wrap(c["ref"]), c["t"], encoder_hidden_states=text,
                                            audio_embedding=c["audio"], audio_emotion=c["emotion"], uc_mask=uc,
                                            is_new_audio=c["new"], update_past_memory=c["update"]).sample
                for i, c in ((i, calls[i]) for i in which)}

    from _compare import max_deviation, side_by_side

    tol = {k: v for k, v in case["tolerance"].get("per_output", {}).items()} or {"*": case["tolerance"]}
    with torch.no_grad():  # the whole case, memory carried across calls
        every = tuple(range(len(calls)))
        bad = {k: v for k, v in max_deviation(run_pack(every), run_original(every), tol).items() if not v["ok"]}
    if bad:
        raise AssertionError(f"MEMO diffusion net: pack and original disagree over the case's calls: {bad}")
    steady = max(i for i, c in enumerate(calls) if not c["new"] and not c["update"])  # memory read only
    update = max(i for i in range(steady) if not calls[i]["new"])  # the same clip's first call (state before steady)
    cold = side_by_side(lambda: run_pack((0,)), lambda: run_original((0,)), tol, repeats=args.repeats)
    with torch.no_grad():  # back to the state the steady call reads (the cold call reset the memory)
        run_pack((update,)), run_original((update,))
    clip_cache = {}  # the sampler's per-clip reference_cache, filled by the first (checked) call
    shapes = {"unet_input": list(calls[0]["sample"].shape),
              "config": "parity case diffusion_net_cfg (widths 32-64-64-64, 2 layers per block, audio + motion "
                        "modules)", "timed_call": steady,
              "cold_call": {k: cold[k] for k in ("pack_s", "original_s", "ratio", "max_abs_diff")}}
    return lambda: run_pack((steady,), clip_cache), lambda: run_original((steady,)), tol, shapes


def _hellomeme(tree: Path, ckpt: Path, case_dir: Path, args):
    """HelloMeme v5 video denoiser on the parity case ``denoise_v5_video`` (its UNet config, the SD1.5 reference UNet,
    hm5_reference + hm5_motion adapters, recorded inputs with control features and motion pads): the reference pass
    is checked, then one denoiser call (one window, motion on) is timed. The pack runs as its pipelines do: the
    reference cache prepared once per run (``pack_prepare_s``, one-time, outside the timed step)."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from hellomeme.models import HM3Denoising3D, HM5MotionAdapter, HM5ReferenceAdapter
    from portrait_animation.sk_attention.adapters import load_hellomeme_module
    from portrait_animation.sk_attention.base_models import load_unet_folder
    from portrait_animation.sk_attention.denoiser import SKDenoiser
    from portrait_animation.sk_attention.knitting import prepared_reference_cache

    case = json.loads((case_dir / "case.json").read_text())
    sd15, ref_dir, mot_dir = "songkey/stable-diffusion-v1-5/unet", "songkey/hm5_reference", "songkey/hm5_motion"
    pack = SKDenoiser(load_unet_folder(ckpt / "checkpoint/unet"), reference=load_hellomeme_module(ckpt / ref_dir),
                      motion=load_hellomeme_module(ckpt / mot_dir)).eval()
    pack_ref = SKDenoiser(load_unet_folder(ckpt / sd15.rsplit("/", 1)[0] / "unet")).eval()

    unet = UNet2DConditionModel.from_pretrained(str(ckpt / "checkpoint/unet"))
    orig_ref = HM3Denoising3D.from_unet2d(unet)
    orig_ref.load_state_dict(load_file(str(ckpt / sd15 / "diffusion_pytorch_model.safetensors")), strict=True)
    orig = HM3Denoising3D.from_unet2d(unet)
    orig.insert_reference_adapter(HM5ReferenceAdapter.from_pretrained(str(ckpt / ref_dir)))
    orig.insert_reference_adapter(HM5MotionAdapter.from_pretrained(str(ckpt / mot_dir)))
    orig, orig_ref = orig.eval().requires_grad_(False), orig_ref.eval().requires_grad_(False)

    x = load_file(str(case_dir / "inputs.safetensors"))
    group = lambda p: {k[len(p):]: v for k, v in x.items() if k.startswith(p)}  # noqa: E731
    control, pads = group("control."), group("pad.")
    with torch.no_grad():
        pack_cache = pack_ref.reference_features(x["latent_ref"], x["text_ref"], control=None)
        orig_cache = orig_ref(x["latent_ref"].unsqueeze(2), 0, encoder_hidden_states=x["text_ref"],
                              return_dict=False)[1]
    tol = case["tolerance"]["per_output"]
    from _compare import max_deviation

    bad = {k: v for k, v in max_deviation({f"ref_cache.{k}": v for k, v in pack_cache.items()},
                                          {f"ref_cache.{k}": v for k, v in orig_cache.items()}, tol).items()
           if not v["ok"]}
    if bad:
        raise AssertionError(f"HelloMeme reference pass: pack and original disagree: {bad}")

    # as the pipelines run it: the reference cache wrapped once per run, each knitting block's reference side
    # (constant across steps and frames) prepared once; its cost is reported apart (one-time, not per step)
    t0 = time.perf_counter()
    with torch.no_grad():
        run_cache = prepared_reference_cache(pack_cache, pack.reference)
        for i, block in enumerate(pack.reference.reference_modules_up):
            if f"up_{i}" in run_cache:
                block.reference_side(run_cache[f"up_{i}"])
    prepare_s = time.perf_counter() - t0

    def fresh(d):  # the original adds control in place into its block outputs; give both fresh copies
        return {k: v.clone() for k, v in d.items()}

    def run_pack():
        out, _ = pack(x["sample"], x["timestep"], x["text"], reference_cache=run_cache, control=fresh(control),
                      motion_pads=fresh(pads), use_motion=True, collect_cache=False)
        return {"noise_pred": out}

    def run_original():
        return {"noise_pred": orig(x["sample"], x["timestep"], encoder_hidden_states=x["text"],
                                   reference_hidden_states=orig_cache, control_hidden_states=fresh(control),
                                   motion_pad_hidden_states=fresh(pads), use_motion=True, return_dict=False)[0]}

    shapes = {"unet_input": list(x["sample"].shape),
              "config": "parity case denoise_v5_video (SD1.5 layout, widths 32-64-64-64, hm5 reference + motion)",
              "pack_prepare_s": prepare_s}
    return run_pack, run_original, {"noise_pred": tol["noise_pred"]}, shapes


COMPARISONS = {
    "hellomeme": Comparison("hellomeme", "hellomeme/denoise_v5_video",
                            "one v5 video denoiser call (one window, reference + motion adapters)", _hellomeme),
    "memo": Comparison("memo", "memo/diffusion_net_cfg", "one Diffusion Net step on the CFG batch as the sampler "
                       "runs it (later clip, memory read, per-clip reference cache)", _memo),
    "hunyuan_portrait": Comparison("hunyuan_portrait", "hunyuan_portrait/unet_forward",
                                   "one UNet call on the three guidance branches + guidance", _hunyuan, sized=True),
}


# ---------------------------------------------------------------------------------------------------------------------
# one comparison (runs in a fresh process)
# ---------------------------------------------------------------------------------------------------------------------
def compare(family: str, tree: Path, args) -> dict:
    import torch

    import_pack()
    from _compare import side_by_side
    from parity.runner import parity_root

    torch.set_num_threads(args.threads)
    shimmed = shim_missing(family)
    add_tree(tree)
    comp = COMPARISONS[family]
    case_dir = parity_root() / comp.case
    sys.path.insert(0, str(parity_root()))
    from materialize import materialize

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = materialize(case_dir / "weights.json", tmp)
        pack_fn, orig_fn, tol, shapes = comp.setup(tree, ckpt, case_dir, args)
        row = side_by_side(pack_fn, orig_fn, tol, repeats=args.repeats)
    sizes = {"frames": args.frames, "latent": args.latent} if comp.sized else {}
    return {"family": family, "case": comp.case, "step": comp.step, "original_tree": str(tree), "shimmed": shimmed,
            **sizes, "threads": torch.get_num_threads(), **shapes, **row}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("family", choices=sorted(COMPARISONS))
    ap.add_argument("tree", type=Path, help="the original implementation's source tree")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--latent", type=int, default=16, help="latent side (image side / 8)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    print(json.dumps(compare(args.family, args.tree.resolve(), args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
