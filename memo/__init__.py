"""MEMO (memory-guided, emotion-aware audio-driven talking video): networks, identity, loaders and the pipeline.

Light on import: the modules are imported where they are used.

* :mod:`.layers` -- building blocks both MEMO UNets share (resnet, down/up-sampling, per-frame group norm, config
  checks); attention, feed-forward and timestep embeddings come from the pack's :mod:`..layers`.
* :mod:`.reference_net` -- the Reference Net (SD1.5-shaped 2D UNet returning per-layer features).
* :mod:`.diffusion_net` -- the Diffusion Net (3D UNet with reference self-attention, emotion-aware audio modules from
  :mod:`..audio.emotion_modules` and memory-guided temporal modules from :mod:`..motion.memory_attention`).
* :mod:`.projections` -- ``image_proj`` (identity tokens) and ``audio_proj`` (audio tokens).
* :mod:`.emotion_classifier` -- the 9-way audio emotion MLP.
* :mod:`.identity` -- the insightface identity embedding (SCRFD + ArcFace R100) with onnxruntime, no insightface.
* :mod:`.loading` -- builds each released folder on the meta device and loads it strictly.
* :mod:`.pipeline` -- the official files from the model store, audio conditions, clip-by-clip generation.
"""
