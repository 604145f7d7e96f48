"""irl_lens: find, read and steer temporal abstractions inside autoregressive action models.

Reproduces Kobayashi et al. 2025, "Emergent temporal abstractions in autoregressive models
enable hierarchical reinforcement learning" (arXiv 2512.20605). Importing the package
registers the gymnasium ids (``irl_lens/GridPinpad-v0``) with lazy entry points; it does
not import torch, MuJoCo or TransformerLens.
"""

from irl_lens.envs.registration import register_envs

__version__ = "0.1.0"

register_envs()

__all__ = ["__version__", "register_envs"]
