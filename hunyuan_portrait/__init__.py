"""HunyuanPortrait: implicit-motion portrait animation on Stable Video Diffusion (networks, pre-processing, sampler)."""
