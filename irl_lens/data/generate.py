"""Expert trajectory generation for gridworld-pinpad.

Thousands of episodes run side by side in :class:`~irl_lens.envs.gridworld_batch.BatchedGridPinpad`
with the DP :class:`~irl_lens.envs.expert.GridExpert`; each chunk of ``n_envs`` episodes is
stepped until every one has ended, then stored step by step. Splits:

========  ============================================================================
split     what it is
========  ============================================================================
pretrain  Table A1 tasks, the expert with ``eps`` random non-terminating actions (paper
          default ``eps = 0``; pretraining is robust up to 0.2). Unlabeled as far as
          pretraining is concerned: the labels are stored only for analyses.
clean     Table A1 tasks, ``eps = 0`` always: the data the metacontroller and the
          supervised controllers are trained on.
========  ============================================================================

The two splits draw from disjoint seed streams, so the same ``--seed`` gives different
episodes for ``pretrain`` and ``clean``. Same seed, same dataset, bit for bit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from irl_lens.data.dataset import (
    FORMAT_NAME,
    FORMAT_VERSION,
    SPLITS,
    TrajectoryDataset,
    pack_chunks,
)
from irl_lens.envs.expert import GridExpert
from irl_lens.envs.gridworld_batch import BatchedGridPinpad
from irl_lens.envs.pinpad import MAX_STEPS, format_task, parse_task

logger = logging.getLogger(__name__)

_SPLIT_STREAM = {"pretrain": 0, "clean": 1}


def generate_gridworld(
    n_episodes: int,
    split: str = "pretrain",
    seed: int = 0,
    eps: float | None = None,
    task: str | Sequence[int] | None = None,
    n_envs: int = 4096,
    progress: bool = True,
    tie_break: str = "random",
) -> TrajectoryDataset:
    """Roll out the expert for ``n_episodes`` episodes and return them as a dataset.

    Args:
        n_episodes: number of episodes (>= 1).
        split: ``pretrain`` or ``clean`` (see the module docstring).
        seed: base seed; per-env seeds and the expert's generator derive from
            ``(seed, split)``.
        eps: expert noise; default 0. Must be 0 (or None) for ``clean``.
        task: a fixed task (``"0-1-2-3"`` or ``"post"``) instead of the Table A1 mix.
        n_envs: episodes simulated at once.
        tie_break: ``random`` (the paper's expert) or ``first`` (deterministic among
            equally short moves), see :class:`~irl_lens.envs.expert.GridExpert`.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not allowed; use one of {', '.join(SPLITS)}")
    if n_episodes < 1:
        raise ValueError(f"episodes={n_episodes} must be >= 1")
    eps = 0.0 if eps is None else float(eps)
    if split == "clean" and eps != 0.0:
        raise ValueError(
            f"eps={eps} is not allowed for the clean split (it is eps=0 by definition)"
        )
    fixed_task = parse_task(task) if task is not None else None
    n_envs = max(1, min(n_envs, n_episodes))

    ss = np.random.SeedSequence([seed, _SPLIT_STREAM[split]])
    env_seeds = ss.generate_state(n_envs, dtype=np.uint32)
    expert_rng = np.random.default_rng(ss.spawn(1)[0])
    env = BatchedGridPinpad(n_envs, task=fixed_task)
    expert = GridExpert(eps=eps, tie_break=tie_break)

    chunks: list[dict[str, np.ndarray]] = []
    done_episodes = 0
    bar = tqdm(total=n_episodes, desc=f"data {split}", unit="ep", disable=not progress)
    first = True
    while done_episodes < n_episodes:
        if first:
            env.reset(seed=[int(s) for s in env_seeds])
            first = False
        else:
            env.reset_envs(np.ones(n_envs, dtype=bool))
        chunk = _run_chunk(env, expert, expert_rng)
        take = min(n_envs, n_episodes - done_episodes)
        chunks.append({k: v[:take] for k, v in chunk.items()})
        done_episodes += take
        bar.update(take)
    bar.close()
    return _assemble(
        chunks, split=split, seed=seed, eps=eps, fixed_task=fixed_task, tie_break=tie_break
    )


def _run_chunk(env: BatchedGridPinpad, expert: GridExpert, rng: np.random.Generator) -> dict:
    """Step every env of ``env`` to the end of its episode; return padded per-step arrays."""
    n = env.n_envs
    agent = np.zeros((n, MAX_STEPS), dtype=np.uint8)
    action = np.zeros((n, MAX_STEPS), dtype=np.uint8)
    subgoal = np.full((n, MAX_STEPS), -1, dtype=np.int8)
    target = np.full((n, MAX_STEPS), -1, dtype=np.int8)
    layout = env.layout.copy()
    tasks = env.task_colours.copy()
    task_len = env.task_len.copy()
    for t in range(MAX_STEPS):
        live = ~env.done
        if not live.any():
            break
        tc = env.target_colour()
        agent[:, t] = env.agent_pos
        subgoal[:, t] = np.where(tc >= 0, tc // 2, -1)
        target[:, t] = tc
        a = expert.act(env, rng)
        action[:, t] = a
        env.step(a)
    return {
        "agent": agent,
        "action": action,
        "subgoal": subgoal,
        "target": target,
        "length": env.t.copy(),
        "success": env.success.copy(),
        "layout": layout,
        "final_agent_pos": env.agent_pos.astype(np.uint8),
        "task": tasks,
        "task_len": task_len,
    }


def _assemble(
    chunks: list[dict], *, split: str, seed: int, eps: float, fixed_task, tie_break: str
) -> TrajectoryDataset:
    cat, valid, arrays = pack_chunks(chunks, MAX_STEPS)
    offsets, lengths = arrays["episode_offsets"], cat["length"]
    arrays |= {
        "final_agent_pos": cat["final_agent_pos"].astype(np.uint8),
        "agent_pos": cat["agent"][valid],
        "action": cat["action"][valid],
        "subgoal": cat["subgoal"][valid],
        "target_colour": cat["target"][valid],
    }
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "env": "gridworld",
        "split": split,
        "obs_kind": "grid",
        "obs_dim": 50,
        "action_kind": "discrete",
        "n_actions": 4,
        "n_episodes": int(len(lengths)),
        "n_steps": int(offsets[-1]),
        "seed": int(seed),
        "eps": float(eps),
        "tie_break": tie_break,
        "task": format_task(fixed_task) if fixed_task is not None else "pretrain-mix",
        "success_rate": float(cat["success"].mean()),
        "mean_length": float(lengths.mean()),
    }
    return TrajectoryDataset(meta, arrays)


def make_dataset(
    env: str = "gridworld",
    episodes: int = 1000,
    split: str = "pretrain",
    seed: int = 0,
    **options,
) -> TrajectoryDataset:
    """Expert episodes of ``env`` (``gridworld`` or ``ant``) as a dataset.

    ``options`` go to :func:`generate_gridworld` (``eps``, ``task``, ``n_envs``,
    ``tie_break``, ``progress``) or :func:`irl_lens.data.generate_ant.generate_ant`
    (``task``, ``expert``, ``n_envs``). Save it with ``ds.save(folder)``.

    Example::

        ds = make_dataset("gridworld", episodes=200, seed=0)
        ds.n_episodes, ds.meta["success_rate"]  # (200, 1.0)
    """
    if env == "gridworld":
        return generate_gridworld(episodes, split=split, seed=seed, **options)
    if env == "ant":
        # lazy: the ant generator imports MuJoCo, which gridworld users need not have loaded
        from irl_lens.data.generate_ant import generate_ant

        return generate_ant(episodes, split=split, seed=seed, **options)
    raise ValueError(f"env={env!r}; allowed: gridworld, ant")
