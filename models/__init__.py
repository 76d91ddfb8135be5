"""Pyro model functions (``PyroModule`` whose ``forward(x)`` is the model), installed as
``pyro_spvae.models``.

:data:`MODELS` maps a CLI/config name to a factory; adding a model family is a file here, one in
``guides/`` and one entry in this registry.
"""
