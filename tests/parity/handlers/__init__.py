"""Parity handlers, one module per model family (``hellomeme.py``, ``memo.py``, ``hunyuan_portrait.py``)."""
