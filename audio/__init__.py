"""Audio conditioning for the talking-head models (MEMO's emotion-aware audio path).

Importing the package is light; the sub-modules load torch code when imported:

* :mod:`.features` -- 16 kHz mono input, utterance normalisation, frame counts, padding to whole clips, frame-rate
  resampling of encoder features and the +-2 frame context windows.
* :mod:`.wav2vec` -- the wav2vec 2.0 encoder (``facebook/wav2vec2-base-960h`` layout), loaded strictly from the
  released files.
* :mod:`.emotion` -- the 9 emotion classes, the official window schedule (which waveform windows are classified
  and how their labels become per-frame / per-clip labels) and manual overrides.
* :mod:`.emotion2vec` -- the emotion2vec+ (data2vec 2.0 style) feature extractor in plain torch, loaded from
  ``model.pt`` + ``config.yaml``.
* :mod:`.separation` -- optional vocal separation with the UVR MDX-Net ONNX model (``Kim_Vocal_2.onnx``).
* :mod:`.conditioner` -- :func:`~.conditioner.condition_audio`, the one entry point that turns an AUDIO dict into
  :class:`~.conditioner.AudioConditions` (per-frame audio windows + per-clip emotion labels).
"""
