"""Seeing inside models: attention heads, MLP neurons, and base-versus-tuned comparisons.

Everything here reads a model through forward hooks (`hooks.py`); the model's own forward
path is never changed. `phi1 inspect attention|neurons` and `phi1 compare` are in `cli.py`.
"""
