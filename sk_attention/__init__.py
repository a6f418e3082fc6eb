"""HelloMeme spatial-knitting modules (v5 / v5b / v5c): reference adapters, motion adapter, control networks.

Nothing heavy is imported here; import the submodules (attention, feed-forward, position tables and coefficient
tokens are the pack's shared :mod:`..layers`):

* :mod:`.knitting`: knitted (row + column) attention blocks;
* :mod:`.motion`: the keyframe-anchored temporal module;
* :mod:`.control`: control encoder (pose + expression -> features) and control projector;
* :mod:`.adapters`: the checkpoint containers and :func:`~.adapters.load_hellomeme_module`.
"""


def load_hellomeme_module(folder, dtype=None, **options):
    """Load a released HelloMeme v5/v5b/v5c module folder strictly (see :func:`.adapters.load_hellomeme_module`)."""
    from .adapters import load_hellomeme_module as load

    return load(folder, dtype=dtype, **options)
