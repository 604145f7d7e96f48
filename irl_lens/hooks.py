"""Residual-stream addressing and interventions: the one place hooks are attached and removed.

**Layers.** A layer index ``l`` in ``0..L`` names the residual stream *before* block ``l``;
``l = L`` is the stream after the last block (what ``ln_final`` reads). Probes, supervised
controllers, the metacontroller and the rollout engine all address the stream through
:func:`resid_hook_name`:

=========  ==================================  =====================================
layer      hook name                           what it holds
=========  ==================================  =====================================
0          ``blocks.0.hook_resid_pre``         the observation embedding
0 < l < L  ``blocks.{l}.hook_resid_pre``       output of blocks ``0..l-1``
L          ``blocks.{L-1}.hook_resid_post``    output of the last block
=========  ==================================  =====================================

**Interventions.** A *controller* is any callable ``e -> e_hat`` on residuals
``[batch, pos, d_model]`` (the paper's ``e_hat_t = e_t + U_t e_t``, see
:mod:`irl_lens.models.controller`). :func:`intervene` attaches one at layer ``l`` as a
TransformerLens forward hook for the duration of a ``with`` block:

    with intervene(model, layer=2, controller=bank.select(labels)):
        out = model(obs)  # blocks >= 2 read bank(e) instead of e

Hooks are GLOBAL state on the model: a hook left behind silently changes every later
forward pass. :func:`intervene` removes exactly the hook it added in a ``finally`` clause, so
it is gone after the block even when the block raises, and nesting or other users' hooks
(``model.hooks(...)``, permanent hooks) are left alone.

Everything here works on any TransformerLens ``HookedRootModule`` with the standard
residual hook names, not only on :class:`~irl_lens.models.base.ActionModel`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

logger = logging.getLogger(__name__)

Controller = Callable[[Float[Tensor, "batch pos d_model"]], Float[Tensor, "batch pos d_model"]]
"""An intervention: residuals in, residuals of the same shape out."""

_RESID_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")


def n_layers_of(model: HookedRootModule) -> int:
    """Number of blocks ``L`` of a model: ``model.cfg.n_layers``, else counted from hook names."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and isinstance(getattr(cfg, "n_layers", None), int):
        return int(cfg.n_layers)
    found = [int(m.group(1)) for name in model.hook_dict if (m := _RESID_PRE.match(name))]
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no 'blocks.{{l}}.hook_resid_pre' hooks; "
            "cannot address its residual stream"
        )
    return max(found) + 1


def check_layer(layer: int, n_layers: int) -> int:
    """Return ``layer`` as an int, or raise ``ValueError`` unless ``0 <= layer <= n_layers``."""
    if isinstance(layer, bool) or int(layer) != layer or not 0 <= int(layer) <= n_layers:
        raise ValueError(
            f"layer={layer!r} is out of range; allowed: 0..{n_layers} "
            f"(0 = before the first block, {n_layers} = after the last)"
        )
    return int(layer)


def resid_hook_name(layer: int, n_layers: int) -> str:
    """Hook name of the residual stream at ``layer`` (see the module docstring's table).

    Example::

        resid_hook_name(1, n_layers=4)  # "blocks.1.hook_resid_pre"
        resid_hook_name(4, n_layers=4)  # "blocks.3.hook_resid_post"
    """
    layer = check_layer(layer, n_layers)
    if layer == n_layers:
        return f"blocks.{n_layers - 1}.hook_resid_post"
    return f"blocks.{layer}.hook_resid_pre"


def layer_hook_name(model: HookedRootModule, layer: int) -> str:
    """:func:`resid_hook_name` for ``model``'s depth."""
    return resid_hook_name(layer, n_layers_of(model))


def parse_layers(spec: str | Sequence[int] | None, n_layers: int) -> list[int]:
    """Layers from a CLI spec: ``None``/``"all"`` -> ``0..L``, ``"0,2,4"`` or ``"1-3"`` (ranges).

    Raises ``ValueError`` naming the bad entry. Duplicates are dropped, order is ascending.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return list(range(n_layers + 1))
    items: list[int] = []
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    for part in parts:
        text = str(part).strip()
        try:
            if isinstance(part, str) and "-" in text.lstrip("-"):
                lo, hi = text.split("-", 1)
                items.extend(range(int(lo), int(hi) + 1))
            else:
                items.append(int(text))
        except ValueError:
            raise ValueError(
                f"layers={spec!r}: {text!r} is not a layer number or range "
                f"(write e.g. 0,2,4 or 1-3; allowed 0..{n_layers})"
            ) from None
    return sorted({check_layer(layer, n_layers) for layer in items})


def _hook_point(model: HookedRootModule, name: str) -> HookPoint:
    try:
        return model.hook_dict[name]
    except KeyError:
        raise ValueError(f"{type(model).__name__} has no hook point {name!r}") from None


@contextmanager
def attach(
    model: HookedRootModule, name: str, fn: Callable[[Tensor, HookPoint], Tensor | None]
) -> Iterator[HookPoint]:
    """Attach the TransformerLens forward hook ``fn(activation, hook)`` at ``name`` for a block.

    Removes exactly this hook on exit, also when the block raises.
    """
    hp = _hook_point(model, name)
    n_before = len(hp.fwd_hooks)
    hp.add_hook(lambda act, hook: fn(act, hook), dir="fwd")
    handle = hp.fwd_hooks[n_before]
    try:
        yield hp
    finally:
        handle.hook.remove()
        if handle in hp.fwd_hooks:
            hp.fwd_hooks.remove(handle)


@contextmanager
def intervene(model: HookedRootModule, layer: int, controller: Controller) -> Iterator[None]:
    """Replace the residual stream at ``layer`` by ``controller(e)`` inside the ``with`` block.

    Every forward pass of ``model`` in the block that goes through layer ``l`` sees
    ``controller(e)`` instead of ``e``; activations below ``l`` are untouched. The hook is
    removed on exit, also on error.

    Example (double the residual stream before block 1)::

        with intervene(model, layer=1, controller=lambda e: 2 * e):
            logits = model(tokens)
    """
    name = layer_hook_name(model, layer)

    def hook(e: Float[Tensor, "batch pos d_model"], hook: HookPoint) -> Tensor:
        out = controller(e)
        if out.shape != e.shape:
            raise ValueError(
                f"controller at {name} returned shape {tuple(out.shape)}, expected {tuple(e.shape)}"
            )
        return out

    with attach(model, name, hook):
        yield


def hook_count(model: HookedRootModule) -> int:
    """Number of forward and backward hooks attached anywhere in ``model`` (0 when clean)."""
    return sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in model.hook_dict.values())


def run_with_metacontroller(
    model: HookedRootModule,
    mc: Callable[..., Any],
    layer: int,
    inputs: Any,
    mask: Tensor | None = None,
    **mc_kwargs: Any,
) -> tuple[Any, Any]:
    """``model(inputs)`` with a metacontroller writing into layer ``layer``; returns the
    model's output and everything the metacontroller computed (its output dataclass:
    ``e_hat``, ``beta``, ``z``, ``kl`` ...).

    ``mc`` is called as ``mc(e, mask, **mc_kwargs)`` on the residuals ``e`` of that layer
    and must return an object with an ``e_hat`` attribute, as
    :class:`irl_lens.models.metacontroller.Metacontroller` does; ``mask`` [batch, pos]
    marks real (non-padding) positions. Works on any TransformerLens model.

    Example::

        out, mo = run_with_metacontroller(model, mc, layer=1, inputs=tokens)
        mo.beta  # [batch, pos] switching gate
    """
    held: dict[str, Any] = {}

    def controller(e: Tensor) -> Tensor:
        held["out"] = mc(e, mask, **mc_kwargs)
        return held["out"].e_hat

    with intervene(model, layer, controller):
        out = model(inputs)
    return out, held["out"]
