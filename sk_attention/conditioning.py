"""From ComfyUI's wire values to what the HelloMeme pipelines take, checked before any work: CONDITIONING -> weighted
text entries, and the output sizes the networks can produce.

Plain Python (no ComfyUI, torch only when converting), so the rules are testable on their own and cheap to import;
``nodes/hellomeme.py`` applies them. Also the built-in prompts the original appends to the user's.
"""
from __future__ import annotations

VERSIONS = ("v5", "v5b", "v5c")

# Output sizes: the control network and the SD1.5 UNet halve the latent (1/8 of the image) three times and the
# control network adds the halves back after x2 upsampling, so both sides must be multiples of 64 pixels.
SIZE_MULTIPLE, SIZE_MIN, SIZE_MAX = 64, 64, 2048
TEXT_WIDTH = 768  # SD1.5 CLIP-L embedding width (the UNet's cross_attention_dim)
# Conditioning dict keys that change nothing for this model (ComfyUI's SD1.5 UNet does not read the pooled output).
_IGNORED_KEYS = {"pooled_output"}

BUILTIN_PROMPT = ("(best quality), highly detailed, ultra-detailed, headshot, person, well-placed five sense organs, "
                  "looking at the viewer, centered composition, sharp focus, realistic skin texture")
BUILTIN_PROMPT_NEW = "best quality, highly detailed, masterpiece, person, portrait, headshot, looking at the viewer, " \
                     "sharp focus."


def builtin_prompt(version: str, video: bool) -> str:
    """The prompt the original appends to the user's (``user + ", " + builtin``, or the built-in alone when the user
    prompt is empty): the newer one for v5b / v5c images, the older one for v5 images and every video."""
    if version not in VERSIONS:
        raise ValueError(f"unknown HelloMeme version {version!r}: use one of {', '.join(VERSIONS)}")
    return BUILTIN_PROMPT_NEW if (not video and version in ("v5b", "v5c")) else BUILTIN_PROMPT


def prompt_entries(conditioning, name: str, text_width: int = TEXT_WIDTH):
    """A ComfyUI CONDITIONING (a list of ``[embeddings (1, T, D), dict]`` entries) -> the pipelines'
    :class:`PromptEntries`, honouring what ComfyUI's samplers honour for a whole-image model and refusing the rest.

    * several entries (Conditioning Combine): each is its own prediction, averaged with its ``strength`` as weight
      (``sum w_i eps_i / sum w_i``), as ComfyUI's ``calc_cond_batch`` does;
    * concatenated conditioning (Conditioning Concat, long prompts): any token count (multiples of 77) is used whole;
    * ``strength`` (Conditioning Set Area Strength): the entry's weight in that average (one entry: no effect, as in
      ComfyUI);
    * a timestep range covering the whole schedule (0 to 1) is accepted; anything else that restricts an entry in
      space or time (area, mask, partial timestep range) or adds a model input (ControlNet, GLIGEN, hooks, ...) is
      refused, naming the input and the key: silently dropping it would change the result without notice.
    """
    from .pipeline_image import PromptEntries

    if not conditioning:
        raise ValueError(f"input '{name}' is empty: connect a CLIP Text Encode node")
    embeds, weights = [], []
    for i, entry in enumerate(conditioning):
        where = f"input '{name}'" + (f" (entry {i + 1} of {len(conditioning)})" if len(conditioning) > 1 else "")
        tensor, extra = entry[0], dict(entry[1] if len(entry) > 1 and entry[1] is not None else {})
        if tensor.ndim != 3 or tensor.shape[0] != 1:
            raise ValueError(f"{where}: text embeddings must be (1, tokens, {text_width}), got {tuple(tensor.shape)}")
        if tensor.shape[-1] != text_width:
            raise ValueError(f"{where}: {tensor.shape[-1]}-wide text embeddings; HelloMeme is SD1.5 and needs a "
                             f"{text_width}-wide SD1.5 CLIP (e.g. CLIPLoader clip_l, type stable_diffusion)")
        start, end = float(extra.pop("start_percent", 0.0)), float(extra.pop("end_percent", 1.0))
        if start > 0.0 or end < 1.0:
            raise ValueError(f"{where}: a timestep range ({start:g} to {end:g}) is not supported by the HelloMeme "
                             "samplers; supported: whole-schedule entries, Conditioning Combine / Concat and strength")
        strength = float(extra.pop("strength", 1.0))
        unknown = sorted(k for k in extra if k not in _IGNORED_KEYS and extra[k] is not None)
        if unknown:
            raise ValueError(f"{where}: conditioning with {', '.join(repr(k) for k in unknown)} is not supported by "
                             "the HelloMeme samplers (area, mask, ControlNet, GLIGEN, hooks, ... would be ignored); "
                             "supported: plain CLIP Text Encode, Conditioning Combine / Concat and strength")
        embeds.append(tensor)
        weights.append(strength)
    if sum(weights) <= 0:
        raise ValueError(f"input '{name}': the strengths of its entries sum to {sum(weights):g}; they must sum to > 0")
    return PromptEntries(embeds, weights)


def check_size(width, height) -> bool | str:
    """True, or why ``width`` x ``height`` cannot be generated (validation message naming the input)."""
    for name, value in (("width", width), ("height", height)):
        if value is None:  # linked: checked when the node runs
            continue
        if not SIZE_MIN <= int(value) <= SIZE_MAX or int(value) % SIZE_MULTIPLE:
            return (f"{name} {value}: must be a multiple of {SIZE_MULTIPLE} from {SIZE_MIN} to {SIZE_MAX} (the control "
                    f"network and the SD1.5 UNet halve the latent three times); HelloMeme was trained at 512")
    return True
