"""Expert-relabelled closed-loop episodes: what the expert would have done where the model went.

Supervised controllers learn from the expert's own trajectories (teacher forcing). Closed
loop, a controlled base drifts into states those trajectories never visit (a torso turned
away from its colour, a wall ahead) and its controller has never learnt to command there.
DAgger (Ross et al. 2011) closes that gap: roll the controlled base out, ask the expert for
its action at every state it visited, and train on those labels too.

:func:`relabelled_episodes` runs a kit's engine with a controller function (for supervised
controllers: ground-truth switching over the bank) on the env's *pretraining* tasks, so no
episode shows a transition the expert data lacks (the post-training task stays unseen), and
records at every step the kit's clean expert action (:attr:`EnvKit.expert_labels`: the
gridworld's shortest-path move, the ant expert's Gaussian mean).
:class:`irl_lens.train.controllers.RelabelledPool` keeps every round's episodes (DAgger's
aggregate) and draws the controllers' training batches from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from irl_lens.rollout.engine import ControllerFn, StepState
from irl_lens.rollout.kit import EnvKit, run_batches

__all__ = ["LabellingControllerFn", "RelabelledEpisodes", "pad_steps", "relabelled_episodes"]


class LabellingControllerFn:
    """A controller function that also records the expert's action at every step.

    Wraps ``controller_fn`` (``None``: the base model acts alone); at each engine step it
    asks ``labeller`` (one of :attr:`EnvKit.expert_labels`) for the expert's action at every
    env's current state, before the model acts, and keeps it in ``labels[env, t]``."""

    def __init__(
        self, controller_fn: ControllerFn | None, labeller: Callable, max_steps: int
    ) -> None:
        self.controller_fn = controller_fn
        self.labeller = labeller
        self.max_steps = max_steps
        self.labels: np.ndarray | None = None

    def __call__(self, state: StepState):
        label = np.asarray(self.labeller(state.env))  # [n_envs] or [n_envs, n_actions]
        if self.labels is None:
            self.labels = np.zeros((len(label), self.max_steps, *label.shape[1:]), label.dtype)
        self.labels[:, state.t] = label
        return None if self.controller_fn is None else self.controller_fn(state)


@dataclass
class RelabelledEpisodes:
    """Closed-loop episodes with the expert's action at every visited state.

    Per-step tensors are ``[n_episodes, n_steps, ...]``, zero after an episode ended
    (``mask`` 0 there)."""

    obs: Tensor
    """What the model read (the rollout's ``model_inputs()``)."""
    label: Tensor
    """The expert's action at each state (long moves, or float torques)."""
    subgoal: Tensor
    """``long``: the true subgoal at each step (-1 after the end)."""
    mask: Tensor
    """``float``: 1 on real steps."""
    success: float
    """Fraction of these episodes the controlled model solved (their own tasks)."""

    @property
    def n_episodes(self) -> int:
        return int(self.obs.shape[0])


def relabelled_episodes(
    kit: EnvKit,
    make_fn: Callable[[], ControllerFn | None],
    n_episodes: int,
    *,
    seed: int = 0,
    stream: int = 0,
    generator: torch.Generator | None = None,
    labeller_args: dict | None = None,
) -> RelabelledEpisodes:
    """``n_episodes`` closed-loop episodes on the env's pretraining tasks (actions sampled),
    each step labelled with the kit's clean expert action.

    Runs through :func:`~irl_lens.rollout.kit.run_batches` (batch ``b``: the envs of
    ``(seed, stream + b)``, a fresh ``make_fn()`` controller function); ``labeller_args`` go to
    :attr:`EnvKit.expert_labels` (gridworld: ``tie_break``, ``seed``)."""
    if kit.expert_labels is None:
        raise ValueError(f"the {kit.name} kit has no expert to relabel episodes with")
    labeller = kit.expert_labels(**(labeller_args or {}))
    with torch.no_grad():  # the pretraining tasks: task=None
        batches = run_batches(kit, n_episodes, seed=seed, stream=stream, generator=generator,
                              make_fn=lambda: LabellingControllerFn(make_fn(), labeller,
                                                                    kit.max_steps))  # fmt: skip
    parts = [(ro.model_inputs(), fn.labels[:, : ro.n_steps], ro.subgoal, ro.valid, ro.success)
             for ro, fn in batches]  # fmt: skip
    width = max(p[0].shape[1] for p in parts)

    def cat(arrays: list, fill: float = 0) -> Tensor:
        return torch.cat(
            [pad_steps(torch.as_tensor(np.asarray(a)), width, fill, 1) for a in arrays]
        )

    valid = cat([p[3] for p in parts]).bool()
    subgoal = cat([p[2] for p in parts], fill=-1).long()
    return RelabelledEpisodes(
        obs=cat([p[0] for p in parts]),
        label=cat([p[1] for p in parts]),
        subgoal=torch.where(valid, subgoal, -1),
        mask=valid.float(),
        success=float(np.concatenate([p[4] for p in parts]).mean()),
    )


def pad_steps(a: Tensor, width: int, fill: float, axis: int) -> Tensor:
    """``a`` cut or padded with ``fill`` to ``width`` along its step ``axis``."""
    a = a.narrow(axis, 0, min(width, a.shape[axis]))
    pad = [0, 0] * (a.dim() - 1 - axis) + [0, width - a.shape[axis]]
    return torch.nn.functional.pad(a, pad, value=fill)
