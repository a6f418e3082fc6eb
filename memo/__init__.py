"""MEMO (memory-guided, emotion-aware audio-driven talking video): networks, projections and loaders.

Light on import: the modules are imported where they are used (``memo.loading`` builds the released folders).

* :mod:`.reference_net` -- the Reference Net (SD1.5-shaped 2D UNet returning per-layer features) and the small
  building blocks both MEMO UNets share (attention, GEGLU feed-forward, resnet, timestep embedding).
* :mod:`.diffusion_net` -- the Diffusion Net (3D UNet with reference self-attention, emotion-aware audio modules and
  memory-guided temporal modules).
* :mod:`.projections` -- ``image_proj`` (identity tokens) and ``audio_proj`` (audio tokens).
* :mod:`.emotion_classifier` -- the 9-way audio emotion MLP.
* :mod:`.loading` -- builds each released folder on the meta device and loads it strictly.
"""
