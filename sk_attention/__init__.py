"""HelloMeme, every released version (v1 to v5c): spatial-knitting modules, denoisers and pipelines.

Nothing heavy is imported here; import the submodules (attention, feed-forward, position tables and coefficient
tokens are the pack's shared :mod:`..layers`):

* :mod:`.knitting`: knitted (row + column) attention blocks, the reference side prepared once per run;
* :mod:`.motion`: the v5 keyframe-anchored temporal module; :mod:`.keyframe_motion`: the v3/v4 one;
* :mod:`.control`: every control network (v1/v2 knitted control nets, v3 control mix, v4/v5 control encoder) and
  the control projectors;
* :mod:`.adapters`: the checkpoint containers (reference and motion adapters of every version, the AnimateDiff
  motion adapters) and :func:`~.adapters.load_hellomeme_module`;
* :mod:`.denoiser`: the SK denoiser with the version's injection scheme; :mod:`.base_models`: SD1.5 parts and LoRA;
* :mod:`.pipeline_image`, :mod:`.pipeline_video`: the version table and the bounded-memory pipelines;
* :mod:`.loading`, :mod:`.conditioning`, :mod:`.schedulers`: files per version, wire values, samplers and draws.
"""


def load_hellomeme_module(folder, dtype=None, **options):
    """Load a released HelloMeme module folder (any version) strictly (see :func:`.adapters.load_hellomeme_module`)."""
    from .adapters import load_hellomeme_module as load

    return load(folder, dtype=dtype, **options)
