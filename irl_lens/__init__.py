"""irl_lens: find, read and steer temporal abstractions inside autoregressive action models.

Reproduces Kobayashi et al. 2025, "Emergent temporal abstractions in autoregressive models
enable hierarchical reinforcement learning" (arXiv 2512.20605).

The public API is re-exported here lazily (PEP 562): ``import irl_lens`` registers the
gymnasium ids (``irl_lens/GridPinpad-v0``, with lazy entry points) and loads neither
torch, MuJoCo nor TransformerLens; each name below imports its module on first use.

==============================  ===========================================================
name                            what it is
==============================  ===========================================================
``load_base_model``             a pretrained base action model (a ``HookedTransformer``)
``load_metacontroller``         a metacontroller with its base model (or attached to yours)
``save_metacontroller``         write a metacontroller folder
``fit_metacontroller``          discovery on any TransformerLens model of token sequences
``Metacontroller``              the paper's metacontroller (a ``HookedRootModule``)
``MetacontrollerConfig``        its sizes
``intervene``                   attach a controller ``e -> e_hat`` at a layer in a ``with``
``run_with_metacontroller``     a forward pass with a metacontroller writing at a layer
``resid_hook_name``             layer index -> residual-stream hook name
``fit_probe``                   a linear softmax probe on residuals
``GridPinpadEnv``               the gymnasium gridworld-pinpad env
``make_dataset``                expert episodes of an env as a dataset
``load_dataset``                a dataset folder written by ``irl-lens data``
``RolloutEngine``               batched closed-loop rollouts with KV caches and controllers,
                                over an env adapter (``GridRolloutEngine``: the gridworld)
==============================  ===========================================================

Example::

    import irl_lens
    model = irl_lens.load_base_model("runs/demo/base")
    loaded = irl_lens.load_metacontroller("runs/demo/mc-full")
    print(irl_lens.resid_hook_name(loaded.layer, model.cfg.n_layers))
"""

from __future__ import annotations

import importlib
from typing import Any

from irl_lens.envs.registration import register_envs

__version__ = "0.1.0"

_FUNCTIONS: dict[str, str] = {
    "load_base_model": "irl_lens.models.base",
    "load_metacontroller": "irl_lens.models.metacontroller",
    "save_metacontroller": "irl_lens.models.metacontroller",
    "fit_metacontroller": "irl_lens.train.discover",
    "intervene": "irl_lens.hooks",
    "run_with_metacontroller": "irl_lens.hooks",
    "resid_hook_name": "irl_lens.hooks",
    "fit_probe": "irl_lens.models.probe",
    "make_dataset": "irl_lens.data.generate",
    "load_dataset": "irl_lens.data.dataset",
}
"""Functions: their module is imported on the first *call* (or a look at their docs)."""
_CLASSES: dict[str, str] = {
    "LoadedMetacontroller": "irl_lens.models.metacontroller",
    "Metacontroller": "irl_lens.models.metacontroller",
    "MetacontrollerConfig": "irl_lens.models.metacontroller",
    "GridPinpadEnv": "irl_lens.envs.gridworld",
    "RolloutEngine": "irl_lens.rollout.engine",
    "GridRolloutEngine": "irl_lens.rollout.grid",
}
"""Classes: imported on first access (``isinstance`` and subclassing need the real class)."""
_API = _FUNCTIONS | _CLASSES


class _LazyFunction:
    """A public function that imports its module (and torch) only when first called."""

    def __init__(self, module: str, name: str) -> None:
        self._module, self.__name__, self.__qualname__ = module, name, name

    def _target(self) -> Any:
        return getattr(importlib.import_module(self._module), self.__name__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self._target().__doc__

    @property
    def __wrapped__(self) -> Any:  # inspect.signature() and help() follow it
        return self._target()

    def __repr__(self) -> str:
        return f"<irl_lens.{self.__name__} (from {self._module})>"


register_envs()

__all__ = ["__version__", "register_envs", *_API]


def __getattr__(name: str) -> Any:
    """Resolve a public name on first use (PEP 562)."""
    if name in _FUNCTIONS:
        value: Any = _LazyFunction(_FUNCTIONS[name], name)
    elif name in _CLASSES:
        value = getattr(importlib.import_module(_CLASSES[name]), name)
    else:
        raise AttributeError(f"module 'irl_lens' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
