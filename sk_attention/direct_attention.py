"""The SD1.5 UNet's diffusers ``Attention`` modules computed directly with the pack's attention entry point.

diffusers' ``Attention.forward`` inspects its processor's call signature on every call before handing over to the
processor; in HelloMeme's UNet at small sizes that is a visible share of each attention. :func:`direct_attention`
makes the plain ones compute ``to_out(attention(to_q(x), to_k(c), to_v(c)))`` themselves, with
:func:`..layers.attention.attention` (so the speed options' kernel still applies, and the exact path takes the same
kernel as the pack's own attention), whenever the call is one the diffusers SDPA processor computes that way:

* the module's processor is diffusers' SDPA processor (``AttnProcessor2_0``) or the speed options' kernel processor
  (``KernelAttnProcessor``), checked per call (so processors set later, e.g. adapters', run as set);
* no mask, no extra keyword arguments, 3-D tokens, no spatial / group / cross / q-k norms, the default scale, no
  residual connection.

Everything else goes through diffusers' own forward. The modules keep their parameters, names, processors and state
dict; only their class changes (to a subclass of diffusers ``Attention``, so ``isinstance`` checks still hold).
"""
from __future__ import annotations

from torch import nn

from ..layers.attention import multihead_attention

_PLAIN_PROCESSORS = frozenset({"AttnProcessor2_0", "KernelAttnProcessor"})
_DIRECT_CLASS = None


def _direct_class():
    global _DIRECT_CLASS
    if _DIRECT_CLASS is None:
        from diffusers.models.attention_processor import Attention

        class DirectAttention(Attention):
            """diffusers ``Attention`` whose plain calls are computed directly (module docstring)."""

            def _is_plain(self, hidden_states) -> bool:
                return (type(self.processor).__name__ in _PLAIN_PROCESSORS and hidden_states.ndim == 3
                        and self.spatial_norm is None and self.group_norm is None and not self.norm_cross
                        and self.norm_q is None and self.norm_k is None and not self.residual_connection
                        and abs(self.scale - (self.inner_dim // self.heads) ** -0.5) < 1e-12)

            def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None,
                        **cross_attention_kwargs):
                if cross_attention_kwargs or attention_mask is not None or not self._is_plain(hidden_states):
                    return super().forward(hidden_states, encoder_hidden_states, attention_mask,
                                           **cross_attention_kwargs)
                context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
                q = self.to_q(hidden_states)
                out = multihead_attention(q, self.to_k(context), self.to_v(context), self.heads).to(q.dtype)
                out = self.to_out[1](self.to_out[0](out))
                return out if self.rescale_output_factor == 1 else out / self.rescale_output_factor

        DirectAttention.__qualname__ = "DirectAttention"
        _DIRECT_CLASS = DirectAttention
    return _DIRECT_CLASS


def __getattr__(name: str):
    if name == "DirectAttention":  # built on first use (diffusers imported lazily); reachable by name for pickle
        return _direct_class()
    raise AttributeError(name)


def direct_attention(model: nn.Module) -> int:
    """Make every diffusers ``Attention`` (exactly that class) under ``model`` a ``DirectAttention``; returns how
    many modules changed class. Idempotent."""
    try:
        from diffusers.models.attention_processor import Attention
    except ImportError:
        return 0
    direct = _direct_class()
    changed = 0
    for module in model.modules():
        if type(module) is Attention:
            module.__class__ = direct
            changed += 1
    return changed
