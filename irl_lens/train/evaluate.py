"""How well a base model imitates the expert, and whether it has learned subgoal structure.

Held-out (teacher-forced) metrics, each next to its *known-task ceiling*: the expert is
uniformly random among equally short moves, so even a model that knows the task can
only reach ``E[max_a p_expert(a | state, task)]`` (computed exactly from the layout with
:func:`irl_lens.envs.expert.expert_action_probs`).

The leading indicator of history use is the split by colour position within a pair:

* **first-colour steps** (heading for colour 2k): which pair comes next is decided by
  the task, which the model must infer; at the start of a segment it is ambiguous.
* **second-colour steps** (heading for 2k+1 after entering 2k): fully determined by
  history (the model saw the agent enter 2k). A model that uses history scores close to
  the ceiling here; one that does not scores like on first-colour steps.

Free-running metric: the model drives the batched env itself (sampled actions) on the
pretraining tasks; among colours entered right after entering an even colour 2k, the
fraction that are 2k+1. On ant-pinpad (:func:`ant_free_running_metrics`): success,
colours completed per episode, and after ``k`` colours how often the next is the task's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from irl_lens.data.dataset import TrajectoryDataset, bucketed_batches, make_batch
from irl_lens.envs.ant_layout import ANT_PRETRAIN_TASKS, parse_ant_task
from irl_lens.envs.expert import distance_maps, expert_action_probs
from irl_lens.envs.gridworld_batch import BatchedGridPinpad
from irl_lens.envs.pinpad import PRETRAIN_TASKS, Task, parse_task, task_blind_ceilings
from irl_lens.models.ant_features import ant_next_colour
from irl_lens.models.base import ActionModel
from irl_lens.rollout.grid import free_run_grid, rollout_grid

logger = logging.getLogger(__name__)


def known_task_ceiling(ds: TrajectoryDataset) -> np.ndarray:
    """Per-step ``max_a p_expert(a | state, task)`` for a gridworld dataset, float[S]."""
    a = ds.arrays
    ep_of_step = np.repeat(np.arange(ds.n_episodes), ds.lengths)
    dist = distance_maps(a["layout"])  # [N, 8, 49]
    target = a["target_colour"].astype(np.int64)
    dist_step = dist[ep_of_step, np.maximum(target, 0)]  # [S, 49]
    probs = expert_action_probs(
        dist_step,
        a["layout"][ep_of_step],
        a["agent_pos"].astype(np.int64),
        target,
        eps=float(ds.meta.get("eps", 0.0)),
        tie_break=ds.meta.get("tie_break", "random"),
    )
    return probs.max(axis=1)


@torch.no_grad()
def heldout_metrics(
    model: ActionModel, ds: TrajectoryDataset, tokens_per_batch: int = 16384
) -> dict[str, float]:
    """Teacher-forced action NLL and accuracy on ``ds``, split by first/second colour."""
    correct = np.zeros(ds.n_steps, dtype=bool)
    nll = np.zeros(ds.n_steps, dtype=np.float64)
    order = bucketed_batches(ds.lengths, tokens_per_batch, np.random.default_rng(0))
    device = next(model.parameters()).device
    for episodes in order:
        b = make_batch(ds, episodes)
        logits = model.split(model(b.obs.to(device))).action_params.cpu()
        logp = torch.log_softmax(logits.float(), -1)
        pred = logits.argmax(-1)
        valid = b.mask.bool()
        step_idx = (
            torch.from_numpy(ds.offsets[episodes])[:, None] + torch.arange(b.mask.shape[1])[None, :]
        )[valid].numpy()
        correct[step_idx] = (pred == b.action)[valid].numpy()
        nll[step_idx] = -logp.gather(-1, b.action.unsqueeze(-1)).squeeze(-1)[valid].numpy()
    ceiling = known_task_ceiling(ds)
    target = ds.arrays["target_colour"].astype(np.int64)
    second = (target >= 0) & (target % 2 == 1)
    first = (target >= 0) & (target % 2 == 0)
    out = {
        "eval/action_nll": float(nll.mean()),
        "eval/accuracy": float(correct.mean()),
        "eval/ceiling": float(ceiling.mean()),
        "eval/accuracy_first": float(correct[first].mean()),
        "eval/ceiling_first": float(ceiling[first].mean()),
        "eval/accuracy_second": float(correct[second].mean()),
        "eval/ceiling_second": float(ceiling[second].mean()),
    }
    out["eval/accuracy_vs_ceiling"] = out["eval/accuracy"] / out["eval/ceiling"]
    out["eval/second_vs_ceiling"] = out["eval/accuracy_second"] / out["eval/ceiling_second"]
    return out


@torch.no_grad()
def heldout_metrics_continuous(
    model: ActionModel, ds: TrajectoryDataset, tokens_per_batch: int = 16384
) -> dict[str, float]:
    """Teacher-forced metrics for continuous actions (ant): Gaussian action NLL per step,
    mean-squared error of the predicted mean action against the expert's action, its
    ratio to the variance of the expert's actions (1 = no better than a constant), and the
    next-observation squared error per dimension. With a next-colour head
    (``next_colour_weight``) also how often its most likely colour is the one the expert's
    torso enters next (``eval/next_colour_acc``, over the steps after which it enters one)."""
    sums = {"nll": 0.0, "mse": 0.0, "obs_mse": 0.0, "colour_hits": 0.0, "colour_steps": 0.0}
    n_tok = 0.0
    device = next(model.parameters()).device
    for episodes in bucketed_batches(ds.lengths, tokens_per_batch, np.random.default_rng(0)):
        b = make_batch(ds, episodes, device)
        out = model(b.obs)
        parts = model.split(out)
        m = b.mask
        nll = -model.action_distribution(parts.action_params).log_prob(b.action)
        mean = model.action_mean(parts.action_params)
        sums["nll"] += float((nll * m).sum())
        sums["mse"] += float((((mean - b.action) ** 2).mean(-1) * m).sum())
        sums["obs_mse"] += float((((parts.next_obs - b.next_obs) ** 2).mean(-1) * m).sum())
        if parts.next_colour is not None:
            target = ant_next_colour(b.next_obs, m)  # -1 (never a guess) where none follows
            sums["colour_hits"] += float((parts.next_colour.argmax(-1) == target).sum())
            sums["colour_steps"] += float((target >= 0).sum())
        n_tok += float(m.sum())
    action_var = float(ds.arrays["action"].var(axis=0).mean())
    out = {
        "eval/action_nll": sums["nll"] / n_tok,
        "eval/action_mse": sums["mse"] / n_tok,
        "eval/action_mse_vs_var": sums["mse"] / n_tok / max(action_var, 1e-12),
        "eval/next_obs_mse": sums["obs_mse"] / n_tok,
    }
    if sums["colour_steps"]:
        out["eval/next_colour_acc"] = sums["colour_hits"] / sums["colour_steps"]
    return out


def pair_completion_rate(entered: list[list[int]]) -> tuple[float, int]:
    """Fraction of colours entered right after an even colour 2k that are 2k+1, and the count."""
    hits = total = 0
    for seq in entered:
        for c, nxt in zip(seq[:-1], seq[1:], strict=True):
            if c % 2 == 0:
                total += 1
                hits += int(nxt == c + 1)
    return (hits / total if total else float("nan")), total


@torch.no_grad()
def free_running_metrics(
    model: ActionModel, n_episodes: int = 1000, seed: int = 0, task: str | None = None
) -> dict[str, float]:
    """Free-running behaviour (sampled actions) on fresh layouts.

    ``rollout/pair_completion``: with no task enforced
    (:func:`irl_lens.rollout.grid.free_run_grid`), the fraction of colours entered right
    after an even colour 2k that are 2k+1.
    ``rollout/success``: success rate in the task-enforcing env on the pretraining tasks
    (or ``task``); low by construction, since a fresh episode does not reveal its task:
    ``rollout/success_ceiling`` is the most a base that never sees it can reach
    (:func:`~irl_lens.envs.pinpad.task_blind_ceilings`; 1/16 on the pretraining tasks).
    """
    env = BatchedGridPinpad(n_episodes, task=task)
    env.reset(seed=[int(s) for s in np.random.SeedSequence([seed, 7]).generate_state(n_episodes)])
    gen = torch.Generator().manual_seed(seed)
    entered = free_run_grid(model, env.layout.copy(), env.agent_pos.copy(), generator=gen)
    rate, count = pair_completion_rate(entered)
    ro = rollout_grid(model, env, generator=gen)
    return {
        "rollout/pair_completion": rate,
        "rollout/pair_events": float(count),
        "rollout/success": float(ro.success.mean()),
        "rollout/success_ceiling": task_blind_ceilings(
            *_task_mix(task, PRETRAIN_TASKS, parse_task)
        )["success"],
        "rollout/mean_length": float(ro.length.mean()),
    }


def _task_mix(
    task: str | None, pretraining: tuple[Task, ...], parse: Callable[[str], Task]
) -> tuple[list[Task], list[Task]]:
    """(the tasks an evaluation env draws from, the expert data's tasks)."""
    return ([parse(task)] if task is not None else list(pretraining)), list(pretraining)


def next_colour_rates(final_n_done: np.ndarray, wrong: np.ndarray, n_colours: int) -> dict:
    """In a task-enforcing env an episode ends at the first wrong colour, so after
    completing ``k`` colours the next colour it entered was the task's in the episodes that
    completed more than ``k``, and another one in those that stopped at ``k`` on a wrong
    colour. Per ``k``: correct / (correct + wrong) (nan where none entered one)."""
    out = {}
    for k in range(n_colours):
        correct = int((final_n_done > k).sum())
        entered = correct + int(((final_n_done == k) & wrong).sum())
        out[f"rollout/next_correct_after_{k}"] = correct / entered if entered else float("nan")
    return out


@torch.no_grad()
def ant_free_running_metrics(
    model: ActionModel, n_episodes: int = 200, seed: int = 0, task: str | None = None
) -> dict[str, float]:
    """Free-running behaviour of an ant base (issue 32): the model drives the ant (sampled
    torques) in the task-enforcing env on the pretraining tasks (or ``task``).

    ``rollout/success`` (the expert, which is told the task: 0.89),
    ``rollout/colours_per_episode`` (colours completed), ``rollout/next_correct_after_K``
    (:func:`next_colour_rates`: after ``K`` colours, how often the next colour entered is
    the task's; K = 0 is the first colour) and the share of episodes ending each way
    (``rollout/end/REASON``). A fresh episode does not reveal its task, so each of the
    first three has a ceiling below 1 for a base that imitates the expert without seeing
    the task (``..._ceiling``, :func:`~irl_lens.envs.pinpad.task_blind_ceilings`: success
    1/16, colours 0.4375, next colour right 0.25 / 0.5 / 0.5 on the pretraining tasks);
    ``rollout/colours_vs_ceiling`` is the colours completed as a fraction of theirs.
    """
    # lazy: MuJoCo loads only for an ant base
    from irl_lens.envs.ant_batch import END_REASONS
    from irl_lens.envs.pinpad import ANT_N_COLOURS
    from irl_lens.rollout.ant import AntRolloutEngine, seeded_ant_env

    env = seeded_ant_env(n_episodes, task=task, seed=seed, stream=7)
    gen = torch.Generator().manual_seed(seed)
    ro = AntRolloutEngine(model, layer=model.cfg.n_layers).run(env, generator=gen)
    wrong = ro.end_reason == END_REASONS.index("wrong_colour")
    task_len = int((ro.task >= 0).sum(1).max())
    ceiling = task_blind_ceilings(*_task_mix(task, ANT_PRETRAIN_TASKS, parse_ant_task))
    nan = float("nan")
    colours = float(ro.final_n_done.mean())
    rates = next_colour_rates(ro.final_n_done, wrong, min(task_len, ANT_N_COLOURS))
    return {
        "rollout/success": float(ro.success.mean()),
        "rollout/success_ceiling": ceiling["success"],
        "rollout/colours_per_episode": colours,
        "rollout/colours_per_episode_ceiling": ceiling["colours_per_episode"],
        "rollout/colours_vs_ceiling": (
            colours / ceiling["colours_per_episode"] if ceiling["colours_per_episode"] else nan
        ),
        "rollout/mean_length": float(ro.length.mean()),
        **rates,
        **{
            k.replace("correct_after", "correct_ceiling_after"): ceiling[k[len("rollout/") :]]
            for k in rates
        },  # fmt: skip
        **{f"rollout/end/{k}": v for k, v in ro.end_reasons().items()},
    }


def base_metrics(
    model: ActionModel, ds: TrajectoryDataset, episodes: int, seed: int = 0
) -> dict[str, float]:
    """Everything ``irl-lens evaluate`` reports for a base model of either environment:
    held-out metrics on ``ds``, then ``episodes`` free-running episodes."""
    if ds.meta.get("action_kind") == "continuous":
        return heldout_metrics_continuous(model, ds) | ant_free_running_metrics(
            model, episodes, seed=seed
        )
    return heldout_metrics(model, ds) | free_running_metrics(model, episodes, seed=seed)


def make_evaluator(rollout_episodes: int, seed: int):
    """The ``evaluate(model, val_ds)`` callback the pretraining loop calls."""

    def evaluate(model: ActionModel, val_ds: TrajectoryDataset) -> dict[str, float]:
        if val_ds.meta.get("action_kind") == "continuous":
            return heldout_metrics_continuous(model, val_ds)
        metrics = heldout_metrics(model, val_ds)
        if rollout_episodes > 0 and val_ds.meta.get("obs_kind") == "grid":
            metrics |= free_running_metrics(model, rollout_episodes, seed=seed)
        return metrics

    return evaluate
