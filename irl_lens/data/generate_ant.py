"""Expert trajectory generation for ant-pinpad (imports MuJoCo; kept apart from gridworld's).

Episodes run side by side in :class:`~irl_lens.envs.ant_batch.BatchedAntPinpad`, driven by the
PPO expert (:func:`~irl_lens.models.ant_expert.load_expert`, by default the weights shipped in
the package). Splits, as in the paper:

========  ============================================================================
split     actions
========  ============================================================================
pretrain  sampled from the expert's Gaussian (Table A2 tasks)
clean     the Gaussian's mean, no sampling (the metacontroller's data)
========  ============================================================================

Stored in the common format (:mod:`irl_lens.data.dataset`) with ``obs_kind = "vector"``
(the 41-float env observation, without the expert's privileged inputs), ``action_kind =
"continuous"`` (8 torques, clipped to [-1, 1] as the env applies them), the target colour
as the subgoal label, plus ``layout uint8[N, 16]`` (cell codes) for figures. Failed
episodes are kept (``success`` says which), as the gridworld data keeps them.
"""

from __future__ import annotations

from collections.abc import Sequence

import mujoco
import numpy as np
import torch
from tqdm.auto import tqdm

from irl_lens.data.dataset import (
    FORMAT_NAME,
    FORMAT_VERSION,
    SPLITS,
    TrajectoryDataset,
    pack_chunks,
)
from irl_lens.envs.ant_batch import BatchedAntPinpad
from irl_lens.envs.ant_layout import ANT_MAX_STEPS, ANT_OBS_DIM, CELL_SIZE, parse_ant_task
from irl_lens.envs.pinpad import format_task
from irl_lens.models.ant_expert import GaussianAgent, expert_inputs, load_expert

_SPLIT_STREAM = {"pretrain": 10, "clean": 11}


RECORDS = ("executed", "mean")
"""Which action an ant pretraining dataset keeps (:func:`generate_ant`'s ``record``)."""


def generate_ant(
    n_episodes: int,
    split: str = "pretrain",
    seed: int = 0,
    task: str | Sequence[int] | None = None,
    expert: GaussianAgent | None = None,
    n_envs: int = 256,
    progress: bool = True,
    action_noise: float = 1.0,
    record: str = "executed",
) -> TrajectoryDataset:
    """Roll out the ant expert for ``n_episodes`` episodes and return them as a dataset.

    ``pretrain`` only: the executed action is the expert's mean plus ``action_noise`` times
    its Gaussian's noise (1: the expert's own sampling), and ``record`` says which action the
    dataset keeps: ``executed`` (the paper's data) or ``mean`` (the expert's intended action
    at the state the noisier one led to: DART-style corrective labels)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not allowed; use one of {', '.join(SPLITS)}")
    if record not in RECORDS:
        raise ValueError(f"record={record!r} is not allowed; use one of {', '.join(RECORDS)}")
    if not (action_noise >= 0 and np.isfinite(action_noise)):
        raise ValueError(f"action_noise={action_noise!r} must be a finite number >= 0")
    if split == "clean" and (action_noise != 1.0 or record != "executed"):
        raise ValueError("action_noise and record apply to the pretrain split (clean: the mean)")
    if n_episodes < 1:
        raise ValueError(f"episodes={n_episodes} must be >= 1")
    fixed_task = parse_ant_task(task) if task is not None else None
    expert = expert if expert is not None else load_expert()
    n_envs = max(1, min(n_envs, n_episodes))
    ss = np.random.SeedSequence([seed, _SPLIT_STREAM[split]])
    env_seeds = ss.generate_state(n_envs, dtype=np.uint32)
    generator = torch.Generator().manual_seed(int(ss.generate_state(1)[0]))
    env = BatchedAntPinpad(n_envs, task=fixed_task)
    deterministic = split == "clean"

    chunks: list[dict[str, np.ndarray]] = []
    done = 0
    bar = tqdm(total=n_episodes, desc=f"ant data {split}", unit="ep", disable=not progress)
    env.reset(seed=[int(s) for s in env_seeds])
    while done < n_episodes:
        if chunks:
            env.reset_envs(np.ones(n_envs, dtype=bool))
        chunk = _run_chunk(env, expert, deterministic, generator, action_noise, record)
        take = min(n_envs, n_episodes - done)
        chunks.append({k: v[:take] for k, v in chunk.items()})
        done += take
        bar.update(take)
    bar.close()
    ds = _assemble(chunks, split=split, seed=seed, fixed_task=fixed_task)
    if split == "pretrain" and (action_noise != 1.0 or record != "executed"):
        ds.meta |= {"action_noise": float(action_noise), "record": record}
    return ds


@torch.no_grad()
def _run_chunk(
    env: BatchedAntPinpad,
    expert: GaussianAgent,
    deterministic: bool,
    generator: torch.Generator,
    action_noise: float = 1.0,
    record: str = "executed",
) -> dict[str, np.ndarray]:
    n, T = env.n_envs, ANT_MAX_STEPS
    obs_buf = np.zeros((n, T, ANT_OBS_DIM), dtype=np.float32)
    act_buf = np.zeros((n, T, 8), dtype=np.float32)
    target = np.full((n, T), -1, dtype=np.int8)
    layout, tasks, task_len = env.layout.copy(), env.task_colours.copy(), env.task_len.copy()
    obs = env.observations()
    for t in range(T):
        live = ~env.done
        if not live.any():
            break
        view = expert_inputs(env)
        dist = expert.distribution(view.x)
        if deterministic:
            a = kept = view.controls(env, dist.mean, expert.torque_scale)
        else:
            noise = torch.randn(dist.mean.shape, generator=generator)
            a = view.controls(env, dist.mean + action_noise * dist.stddev * noise,
                              expert.torque_scale)  # fmt: skip
            kept = a if record == "executed" else view.controls(env, dist.mean, expert.torque_scale)
        obs_buf[live, t] = obs[live]
        act_buf[live, t] = kept[live]
        target[live, t] = env.target_colour()[live]
        obs, *_ = env.step(a)  # float64 actuator commands already
    return {
        "obs": obs_buf,
        "action": act_buf,
        "target": target,
        "length": env.t.copy(),
        "success": env.success.copy(),
        "final_obs": obs.astype(np.float32),
        "layout": layout,
        "task": tasks,
        "task_len": task_len,
    }


def _assemble(chunks: list[dict], *, split: str, seed: int, fixed_task) -> TrajectoryDataset:
    cat, valid, arrays = pack_chunks(chunks, ANT_MAX_STEPS)
    offsets, lengths = arrays["episode_offsets"], cat["length"]
    arrays |= {
        "final_obs": cat["final_obs"],
        "obs": cat["obs"][valid],
        "action": cat["action"][valid],
        "subgoal": cat["target"][valid],  # every ant colour is its own subgoal
        "target_colour": cat["target"][valid],
    }
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "env": "ant",
        "split": split,
        "obs_kind": "vector",
        "obs_dim": ANT_OBS_DIM,
        "action_kind": "continuous",
        "n_actions": 8,
        "n_episodes": int(len(lengths)),
        "n_steps": int(offsets[-1]),
        "seed": int(seed),
        "eps": 0.0,
        "sampling": "mean" if split == "clean" else "gaussian",
        "cell_size": CELL_SIZE,
        "task": format_task(fixed_task) if fixed_task is not None else "pretrain-mix",
        "success_rate": float(cat["success"].mean()),
        "mean_length": float(lengths.mean()),
        # the same seed gives the same episodes on one machine; another MuJoCo build (or
        # CPU) gives others (docs/experiments-log.md, tenth session), so the data say which
        "mujoco": mujoco.__version__,
    }
    return TrajectoryDataset(meta, arrays)
