"""HelloMeme's SD1.5 UNet attention computed directly (sk_attention/direct_attention.py): the same values as
diffusers' own forward, diffusers' forward for whatever is not plain, the module otherwise unchanged."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from portrait_animation.layers.attention import attention_kernel
from portrait_animation.sk_attention.direct_attention import direct_attention


def _pair(cross: bool):
    torch.manual_seed(0)
    plain = Attention(32, cross_attention_dim=24 if cross else None, heads=4, dim_head=8, out_bias=True)
    direct = copy.deepcopy(plain)
    holder = torch.nn.ModuleDict({"a": direct})
    assert direct_attention(holder) == 1 and direct_attention(holder) == 0  # idempotent
    return plain.eval(), holder["a"].eval()


@pytest.mark.parametrize("cross", [False, True])
def test_direct_attention_equals_diffusers(cross):
    plain, direct = _pair(cross)
    assert isinstance(direct, Attention) and type(direct.processor) is AttnProcessor2_0
    assert plain.state_dict().keys() == direct.state_dict().keys()
    x = torch.randn(2, 9, 32)
    context = torch.randn(2, 5, 24) if cross else None
    with torch.no_grad():
        torch.testing.assert_close(direct(x, encoder_hidden_states=context), plain(x, encoder_hidden_states=context),
                                   rtol=0, atol=1e-6)
        seen = []
        with attention_kernel(lambda q, k, v: seen.append(k.shape[2]) or torch.zeros_like(q)):
            out = direct(x, encoder_hidden_states=context)  # through the kernel: zero attention, the bias
            torch.testing.assert_close(out, direct.to_out[0].bias.expand_as(out), rtol=0, atol=0)
            mask = torch.zeros(2, 1, 5 if cross else 9)
            torch.testing.assert_close(direct(x, encoder_hidden_states=context, attention_mask=mask),
                                       plain(x, encoder_hidden_states=context, attention_mask=mask), rtol=0, atol=0)
        assert seen == [5 if cross else 9]  # the masked call went to diffusers' processor


def test_other_processors_run_as_set_and_the_module_copies():
    plain, direct = _pair(False)
    direct.set_processor(AttnProcessor())
    plain.set_processor(AttnProcessor())
    x = torch.randn(2, 9, 32)
    seen = []
    with torch.no_grad(), attention_kernel(lambda q, k, v: seen.append(1) or torch.zeros_like(q)):
        torch.testing.assert_close(direct(x), plain(x), rtol=0, atol=0)
    assert not seen
    for other in (copy.deepcopy(direct), pickle.loads(pickle.dumps(direct))):
        assert type(other) is type(direct)
        with torch.no_grad():
            torch.testing.assert_close(other(x), direct(x), rtol=0, atol=0)
