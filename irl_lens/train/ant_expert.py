"""PPO for the ant-pinpad expert (paper App. C.1.1), written CleanRL-style in one file.

One Gaussian MLP agent is trained on all Table A2 tasks. It walks to the next waypoint
of the grid-level shortest path (the per-cell direction map at the torso's cell), and it
sees the world in a *canonical frame*: the ant is 4-fold symmetric, so each state is
relabelled (legs and body axes turned by a multiple of 90 degrees, see
:func:`~irl_lens.envs.ant_batch.leg_rotation`) until the waypoint lies within 45 degrees of the
torso's x axis, and the agent's actions are mapped back the same way
(:meth:`~irl_lens.envs.ant_batch.BatchedAntPinpad.expert_view` /
:meth:`~irl_lens.envs.ant_batch.BatchedAntPinpad.controls`). One forward gait that steers then
serves every compass direction: without the frame, 3M steps of PPO learned a gait that
ignored the (random, body-relative) waypoint direction and never solved a task. Inputs are
normalised by running statistics that stay fixed through a rollout and its update. The
reward adds to the sparse task reward the paper's intrinsic term ``velocity . waypoint
direction``, a small speed bonus, a bonus per colour reached, a penalty when the episode
fails (wrong colour, wall, torso height), a cost for a torso close to the 1.0 m height
limit, and Gymnasium-Ant-style control cost (an alive bonus, and costs on the yaw rate and
on speed across the waypoint direction, are available but off by default); rewards are
divided by the running std of the discounted return.

The network and its loader live in :mod:`irl_lens.models.ant_expert`; the update is the
shared PPO core (:func:`irl_lens.train.rl.ppo_update`, with GAE, a critic, an entropy bonus
and per-minibatch advantage normalisation). Pieces here, top to bottom: :class:`PPOConfig`,
:class:`ExpertCollector` (one batched rollout, with :func:`shaped_reward`),
:func:`ppo_update`, :func:`train_ant_expert` (the loop with progress, per-task success,
checkpoints and ``resume``), :func:`init_source`, :func:`saved_ppo_config`,
:func:`evaluate_expert`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from irl_lens import runs
from irl_lens.envs.ant_batch import END_REASONS, BatchedAntPinpad
from irl_lens.envs.ant_layout import ANT_MAX_STEPS, CELL_SIZE
from irl_lens.envs.pinpad import Task, format_task
from irl_lens.models.ant_expert import (
    LEGACY_FIELDS,
    SHIPPED_EXPERT,
    ExpertConfig,
    GaussianAgent,
    RunningNorm,
    build_agent,
    check_cell_size,
    expert_inputs,
    expert_weights,
)
from irl_lens.train import rl
from irl_lens.train.loop import guarded

logger = logging.getLogger(__name__)


@dataclass
class PPOConfig(ExpertConfig):
    """Expert PPO settings (defaults: CleanRL's MuJoCo PPO, sized for 2 CPU cores), after the
    network's own (:class:`~irl_lens.models.ant_expert.ExpertConfig`: ``hidden``,
    ``init_log_std``, ``torque_scale``, ``deploy_torque_scale``)."""

    total_steps: int = 4_000_000
    """Env steps in all (summed over envs)."""
    n_envs: int = 64
    """Episodes simulated side by side."""
    n_steps: int = 64
    """Steps per env per rollout; a batch is ``n_envs * n_steps`` transitions."""
    lr: float = 3e-4
    """Adam learning rate, annealed linearly to 0."""
    gamma: float = 0.99
    gae_lambda: float = 0.95
    update_epochs: int = 10
    n_minibatches: int = 8
    """Minibatches of 512 per epoch (80 gradient steps per update). With 32 of 128 the
    approximate KL per update grew from 0.05 to 0.4 within 1.2M steps."""
    clip: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 3e-3
    """Entropy bonus (paper: 3e-4). Without one the std fell from 0.74 to 0.33 in 1.2M steps,
    before the ant had learned to walk; 1e-3 slowed that only a little."""
    max_grad_norm: float = 0.5
    velocity_weight: float = 1.0
    """Weight of ``velocity . waypoint direction`` (m/s) per step."""
    speed_bonus: float = 0.1
    """Weight of the torso's planar speed ``|v|`` (m/s), in any direction, to get a gait
    started (before the canonical frame, 4M steps without it gave an ant that stood still)."""
    subgoal_bonus: float = 2.0
    """Reward for each task colour entered."""
    success_bonus: float = 5.0
    """Extra reward when the task is completed (the sparse task reward, scaled)."""
    ctrl_cost: float = 0.05
    """Weight of ``|a|^2`` subtracted per step."""
    height_cost: float = 10.0
    """Weight of ``max(0, z - soft_max_height)`` subtracted per step. The episode ends when
    the torso rises above 1.0 m, and a bouncy gait was the expert's commonest failure: with
    3 x max(0, z - 0.85) the training success after 2.8M steps was 0.145, with 10 x
    max(0, z - 0.75) it was 0.292 (same seed and everything else). 30 x max(0, z - 0.7)
    slowed learning to walk (training success 0.018 against 0.104 after 1.4M steps)."""
    soft_max_height: float = 0.75
    """Torso height (m) above which ``height_cost`` applies."""
    yaw_cost: float = 0.0
    """Weight of the torso's yaw rate ``|omega_z|`` (rad/s) subtracted per step. Off: the
    shipped expert spins at ~1.1 rad/s, but with yaw 0.3 + lateral 0.5 the ant learned to
    hop fast and end every episode above 1.0 m within ~12 steps (per-step costs made an
    early end cheaper), and with yaw 0.1 + lateral 0.2 training success was 0.004 at 2M
    steps against 0.21 without (same seed)."""
    lateral_cost: float = 0.0
    """Weight of the planar speed across the waypoint direction (m/s) subtracted per step
    (off; see ``yaw_cost``)."""
    fail_penalty: float = 10.0
    """Reward subtracted when a step ends the episode as a failure (wrong colour, wall cell,
    torso height out of range)."""
    alive_bonus: float = 0.0
    """Reward per step while the episode lasts (Gymnasium's Ant pays 1.0). Off by default:
    with 0.5 the expert learned to dawdle, as surviving paid more than the risky walk past
    other colours (after 4M steps, 44 of 128 episodes timed out and the ant spun at 1.2
    rad/s). ``fail_penalty`` keeps it upright instead."""
    edge_cost: float = 0.0
    """Weight of ``max(0, edge_margin - clearance)`` subtracted per step, ``clearance`` the
    torso's distance (m) to the nearest cell it must not enter
    (:meth:`~irl_lens.envs.ant_batch.BatchedAntPinpad.clearance`: off the grid, the wall, another
    colour than the target). Off for the 0.7-torque expert; its commonest failure was then
    leaving the grid sideways (0.069 of 1000 pretraining episodes, wall cell 0.005)."""
    edge_margin: float = 0.5
    """Clearance (m) below which ``edge_cost`` applies."""
    checkpoint_every: int = 25
    """Updates between checkpoints."""
    scale_rewards: bool = True
    """Divide rewards by the running std of the discounted return (CleanRL's
    ``NormalizeReward``), so the critic's loss, and with it the shared gradient clip, stays
    on the scale of the actor's."""

    def __post_init__(self) -> None:
        runs.check_finite_fields(self)
        for name in ("total_steps", "n_envs", "n_steps", "update_epochs", "n_minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"PPOConfig.{name}={getattr(self, name)!r} must be >= 1")
        if (self.n_envs * self.n_steps) % self.n_minibatches:
            raise ValueError("PPOConfig.n_minibatches must divide n_envs * n_steps")
        if not self.edge_margin >= 0:
            raise ValueError(f"PPOConfig.edge_margin={self.edge_margin!r} must be >= 0")
        if not self.lr > 0:
            raise ValueError(f"PPOConfig.lr={self.lr!r} must be > 0")
        super().__post_init__()  # the torque scales

    @property
    def batch_size(self) -> int:
        return self.n_envs * self.n_steps

    @property
    def n_updates(self) -> int:
        return max(1, self.total_steps // self.batch_size)

    @property
    def update_settings(self) -> rl.PPOSettings:
        """The PPO update's settings (CleanRL's MuJoCo PPO)."""
        return rl.PPOSettings(
            epochs=self.update_epochs, clip=self.clip, n_minibatches=self.n_minibatches,
            normalize_advantages=True, vf_coef=self.vf_coef, ent_coef=self.ent_coef,
            max_grad_norm=self.max_grad_norm,
        )  # fmt: skip


@dataclass
class Rollout:
    """One batch of transitions, ``[n_steps, n_envs, ...]``."""

    x: torch.Tensor
    actions: torch.Tensor
    logp: torch.Tensor
    values: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    last_value: np.ndarray


class EpisodeLog:
    """Per-task success and return of finished episodes (a sliding window per task)."""

    def __init__(self, window: int = 200) -> None:
        self.window = window
        self.by_task: dict[Task, list[bool]] = {}
        self.returns: list[float] = []

    def add(self, task: Task, success: bool, ret: float) -> None:
        hist = self.by_task.setdefault(task, [])
        hist.append(bool(success))
        del hist[: -self.window]
        self.returns.append(float(ret))
        del self.returns[: -self.window * 4]

    def success(self) -> float:
        rates = [np.mean(v) for v in self.by_task.values() if v]
        return float(np.mean(rates)) if rates else 0.0

    def per_task(self) -> dict[str, float]:
        return {format_task(k): float(np.mean(v)) for k, v in sorted(self.by_task.items())}


def shaped_reward(
    cfg: PPOConfig, env_reward: np.ndarray, n_done_before: np.ndarray, env: BatchedAntPinpad,
    actions: np.ndarray, speed: np.ndarray, progress: np.ndarray, was_active: np.ndarray,
    failed: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """The expert's training reward for one step (see the module docstring), given the
    torso's planar ``speed``, ``progress`` (its velocity towards the waypoint) and whether
    the step ended the episode as a failure (``failed``: wrong colour, wall, height).
    Success also pays the alive bonus of the steps left, so finishing early is never worse
    than idling."""
    reached = env.n_done - n_done_before
    r = (
        cfg.velocity_weight * progress
        + cfg.speed_bonus * speed
        + cfg.subgoal_bonus * reached
        + cfg.success_bonus * env_reward
        - cfg.ctrl_cost * (np.clip(actions, -1, 1) ** 2).sum(1)
        - cfg.height_cost * np.maximum(env.qpos[:, 2] - cfg.soft_max_height, 0.0)
        - cfg.yaw_cost * np.abs(env.qvel[:, 5])
        - cfg.lateral_cost * np.sqrt(np.maximum(speed**2 - progress**2, 0.0))
        - (
            cfg.edge_cost * np.maximum(cfg.edge_margin - env.clearance(), 0.0)
            if cfg.edge_cost
            else 0.0
        )
        + cfg.alive_bonus
        # finishing early must not forfeit the alive bonus of the steps left
        + cfg.alive_bonus * env_reward * (ANT_MAX_STEPS - env.t)
        - cfg.fail_penalty * failed
    )
    return np.where(was_active, r, 0.0).astype(np.float32)


class ExpertCollector:
    """Steps a :class:`BatchedAntPinpad` with the agent, resetting finished envs in place."""

    def __init__(self, env: BatchedAntPinpad, cfg: PPOConfig, seed: int) -> None:
        self.env, self.cfg = env, cfg
        env.reset(seed=seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.ep_return = np.zeros(env.n_envs)
        self.log = EpisodeLog()
        self.return_norm = RunningNorm(1)
        self.discounted = np.zeros(env.n_envs)

    def collect(self, agent: GaussianAgent) -> Rollout:
        cfg, env = self.cfg, self.env
        T, n = cfg.n_steps, env.n_envs
        xs, acts, logps = [], [], []
        values = np.zeros((T, n), np.float32)
        rewards = np.zeros((T, n), np.float32)
        dones = np.zeros((T, n), np.float32)
        speed = np.zeros((T, n))  # planar torso speed (m/s), for the log
        toward = np.zeros((T, n))  # its component towards the waypoint
        for t in range(T):
            view = expert_inputs(env)
            x = view.x
            with torch.no_grad():
                dist = agent.distribution(x)
                a = dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=self.generator)
                logps.append(dist.log_prob(a).sum(-1))
                values[t] = agent.value(x).numpy()
            xs.append(x)
            acts.append(a)
            a_np = a.numpy().astype(np.float64)
            n_done = env.n_done.copy()
            active = ~env.done
            _, reward, term, trunc, _ = env.step(view.controls(env, a, agent.torque_scale))
            speed[t] = np.linalg.norm(env.velocity, axis=1)
            toward[t] = (env.velocity * view.waypoint).sum(1)
            failed = term & ~env.success
            rewards[t] = shaped_reward(
                cfg, reward, n_done, env, a_np, speed[t], toward[t], active, failed
            )
            self.ep_return += rewards[t]
            ended = term | trunc
            dones[t] = ended
            self.discounted = self.discounted * cfg.gamma + rewards[t]
            self.return_norm.update(torch.from_numpy(self.discounted[:, None]))
            self.discounted[ended] = 0.0
            for i in np.flatnonzero(ended):
                self.log.add(env.tasks[i], env.success[i], self.ep_return[i])
            self.ep_return[ended] = 0.0
            if ended.any():
                env.reset_done()
        with torch.no_grad():
            last_value = agent.value(expert_inputs(env).x).numpy()
        raw = rewards
        if cfg.scale_rewards:
            rewards = rewards / np.float32(np.sqrt(float(self.return_norm.var[0]) + 1e-8))
        self.raw_reward_per_step = float(raw.mean())
        self.speed, self.toward = float(speed.mean()), float(toward.mean())
        return Rollout(
            torch.stack(xs), torch.stack(acts), torch.stack(logps), values, rewards, dones,
            last_value,
        )  # fmt: skip


def ppo_update(
    agent: GaussianAgent, opt: torch.optim.Optimizer, ro: Rollout, cfg: PPOConfig,
    generator: torch.Generator,
) -> dict[str, float]:  # fmt: skip
    """``update_epochs`` passes of shuffled minibatch PPO (:func:`irl_lens.train.rl.ppo_update`):
    GAE advantages normalised per minibatch, clipped surrogate + value loss - entropy bonus,
    the gradient norm clipped. Returns the means over the update's steps."""
    adv, ret = rl.gae(ro.rewards, ro.values, ro.dones, ro.last_value, cfg.gamma, cfg.gae_lambda)
    b_x, b_actions = ro.x.flatten(0, 1), ro.actions.flatten(0, 1)  # [n_steps * n_envs, ...]
    data = rl.PPOBatch(
        logp=ro.logp.flatten(),
        advantages=torch.from_numpy(adv.reshape(-1)),
        returns=torch.from_numpy(ret.reshape(-1)),
    )

    def evaluate(piece: rl.Piece) -> rl.PolicyEval:
        mb_x = piece.take(b_x)
        dist = agent.distribution(mb_x)
        logp = dist.log_prob(piece.take(b_actions)).sum(-1)
        # the entropy's graph after the log-prob's, as before the shared core: autograd sums
        # log_std's gradients in graph order, and the same seed gives the same bits
        entropy = dist.entropy().sum(-1)
        return rl.PolicyEval(logp=logp, value=agent.value(mb_x), entropy=entropy)

    steps = rl.ppo_update(evaluate, opt, data, cfg.update_settings, generator=generator)
    return {
        "loss/policy": _mean([s.policy_loss for s in steps]),
        "loss/value": _mean([s.value_loss for s in steps]),
        "clip_frac": _mean([s.clip_fraction for s in steps]),
        "approx_kl": _mean([s.approx_kl for s in steps]),
    }


def _mean(values: list[float]) -> float:
    total = 0.0
    for v in values:  # in order: the logged numbers stay those of the same seed before
        total += v
    return total / len(values)


def train_ant_expert(
    out: Path,
    cfg: PPOConfig,
    seed: int = 0,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    init: str | Path | None = None,
) -> dict:
    """Train the expert into run folder ``out``; returns the summary (also ``summary.json``).

    ``stop_after`` ends after that many updates (as if interrupted; tests ``resume``).
    Resuming restores weights, optimiser, normaliser and RNG states, and restarts the
    envs from fresh episodes (seeded by the update count). ``init`` fine-tunes: the agent
    starts from that expert's weights (a run folder, or ``"shipped"``) instead of a fresh
    initialisation; where they came from is kept in ``config.json`` (see
    :func:`init_source`).
    """
    out = Path(out)
    config = {
        "kind": "ant_expert", "version": runs.RUN_VERSION, "ppo": cfg.to_dict(), "seed": seed,
        "cell_size": CELL_SIZE,
    }  # fmt: skip
    agent = build_agent(cfg, seed)
    if init is not None:
        weights, config["init"] = init_source(init, cfg)
        if not resume:
            runs.load_weights(agent, weights)
    opt = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=1e-5)
    generator = torch.Generator().manual_seed(seed + 1)
    update, env_steps, train_seconds = 0, 0, 0.0
    runs.check_output(out, "ant_expert", resume=resume)
    if resume:
        runs.remove_temp(out / "checkpoints")
        ckpts = runs.checkpoint_dirs(out)
        if not ckpts:
            raise runs.RunError(f"--resume: {out} has no checkpoint to resume from")
        saved = runs.read_json(out / "config.json", "run config")
        check_cell_size(saved, f"--resume: {out}")
        if saved_ppo_config(saved.get("ppo", {})).to_dict() != config["ppo"]:
            raise runs.RunError(f"--resume: {out}/config.json differs from the requested settings")
        if saved.get("init", {}).get("sha256") != config.get("init", {}).get("sha256"):
            raise runs.RunError(
                f"--resume: {out} started from other weights ({saved.get('init', {}).get('from')})"
                f" than --init {init}"
            )
        runs.load_weights(agent, ckpts[-1] / "model.safetensors")
        state = runs.load_trainer_state(
            ckpts[-1], ("optimizer", "generator", "return_norm", "update", "env_steps", "seconds")
        )
        opt.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        update, env_steps, train_seconds = state["update"], state["env_steps"], state["seconds"]
        runs.truncate_metrics(out / "metrics.jsonl", "update", update)
    else:
        out.mkdir(parents=True, exist_ok=True)
        runs.write_json(out / "config.json", config)
    env = BatchedAntPinpad(cfg.n_envs)
    collector = ExpertCollector(env, cfg, seed=seed * 1_000_003 + update)
    if resume:
        collector.return_norm.load_state_dict(state["return_norm"])
    bar = tqdm(
        total=cfg.n_updates, initial=update, desc="ppo expert", unit="upd", disable=not progress
    )
    last = update
    with guarded(bar, update) as guard:
        while update < cfg.n_updates and (stop_after is None or update - last < stop_after):
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = cfg.lr * (1.0 - update / cfg.n_updates)
            ro = collector.collect(agent)
            stats = ppo_update(agent, opt, ro, cfg, generator)
            # The input statistics stay fixed through a rollout and its update, so the update's
            # log-probs and values are those the rollout saw (ratios start at 1); they absorb
            # the rollout afterwards.
            agent.norm.update(ro.x.flatten(0, 1))
            update += 1
            guard.at(update)
            env_steps += cfg.batch_size
            train_seconds += time.perf_counter() - t0
            rec = {
                "update": update,
                "env_steps": env_steps,
                "seconds": train_seconds,
                "success": collector.log.success(),
                "return": float(np.mean(collector.log.returns)) if collector.log.returns else 0.0,
                "reward_per_step": collector.raw_reward_per_step,
                "speed": collector.speed,
                "speed_toward_waypoint": collector.toward,
                "std": float(agent.log_std.detach().exp().mean()),
                **stats,
            }
            runs.append_metrics(out / "metrics.jsonl", rec)
            bar.set_postfix(success=f"{rec['success']:.2f}", ret=f"{rec['return']:.1f}")
            bar.update(1)
            if guard.checkpoint_due(update, cfg.checkpoint_every, cfg.n_updates):
                runs.save_checkpoint(
                    out, update, agent,
                    {"optimizer": opt.state_dict(), "generator": generator.get_state(),
                     "return_norm": collector.return_norm.state_dict(),
                     "update": update, "env_steps": env_steps, "seconds": train_seconds},
                )  # fmt: skip
                runs.write_json(out / "per_task_success.json", collector.log.per_task())
                guard.saved(update)
    bar.close()
    finished = update >= cfg.n_updates
    if finished:
        runs.save_weights(agent, out / "model.safetensors")
    summary = {
        "updates": update,
        "env_steps": env_steps,
        "train_seconds": train_seconds,
        "env_steps_per_s": env_steps / max(train_seconds, 1e-9),
        "train_success": collector.log.success(),
        "finished": finished,
    }
    runs.write_json(out / "summary.json", summary)
    return summary


def init_source(init: str | Path, cfg: PPOConfig) -> tuple[Path, dict]:
    """The weights a fine-tuning run starts from (``init``: an expert run folder, or
    ``"shipped"``), and the record of them kept in its ``config.json``: the source, the
    weights' SHA-256, and how those were made (the run's config, or the shipped card, which
    a later ``--ship`` overwrites). The source may have been trained in other cells (the
    fine-tune adapts it). Raises :class:`~irl_lens.runs.RunError` when the source is not an
    expert or its network is not ``cfg``'s size."""
    if str(init) == "shipped":
        weights = SHIPPED_EXPERT
        made = runs.read_json(SHIPPED_EXPERT.with_suffix(".json"), "shipped expert card")
    else:
        made = runs.read_json(Path(init) / "config.json", "--init expert run config")
        if made.get("kind") != "ant_expert":
            raise runs.RunError(f"--init {init}: a {made.get('kind')!r} run, not an ant_expert")
        weights = expert_weights(init)
    # no cell-size check: fine-tuning is how an expert moves to an arena of other cells
    hidden = saved_ppo_config(made.get("ppo", {})).hidden
    if hidden != cfg.hidden:
        raise runs.RunError(f"--init {init}: its hidden width is {hidden}, this run's {cfg.hidden}")
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    return Path(weights), {"from": str(init), "weights": str(weights), "sha256": digest,
                           "made_with": made}  # fmt: skip


def saved_ppo_config(ppo: dict) -> PPOConfig:
    """The :class:`PPOConfig` a saved expert (run config or card) was trained with. Fields it
    lacks take their default, except the torque scales: experts saved before they existed
    trained and act at :data:`~irl_lens.models.ant_expert.LEGACY_TORQUE_SCALE`."""
    return PPOConfig.from_dict(LEGACY_FIELDS | ppo)


@torch.no_grad()
def evaluate_expert(
    agent: GaussianAgent,
    episodes: int,
    task: Task | None = None,
    deterministic: bool = True,
    seed: int = 0,
    n_envs: int = 128,
    progress: bool = True,
) -> dict:
    """Success rate over ``episodes`` episodes (Table A2 mix when ``task`` is None), mean
    length, success per task, and how the episodes ended (fractions per
    :data:`~irl_lens.envs.ant_batch.END_REASONS` name)."""
    env = BatchedAntPinpad(min(n_envs, episodes), task=task)
    env.reset(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    started = env.n_envs
    finished: list[tuple[Task, int, int]] = []  # (task, length, end reason)
    bar = tqdm(total=episodes, desc=f"eval {format_task(task) if task else 'pretrain'}",
               unit="ep", disable=not progress)  # fmt: skip
    while len(finished) < episodes:
        view = expert_inputs(env)
        a = agent.act(view.x, deterministic, generator)
        _, _, term, trunc, _ = env.step(view.controls(env, a, agent.torque_scale))
        ended = np.flatnonzero(term | trunc)
        for i in ended:
            finished.append((env.tasks[i], int(env.t[i]), int(env.end_reason[i])))
        bar.update(len(ended))
        if len(ended):
            # start new episodes only while more are needed; the rest stay frozen
            need = max(0, episodes - started)
            restart = ended[:need]
            if len(restart):
                env.reset_envs(restart)
                started += len(restart)
    bar.close()
    finished = finished[:episodes]
    success_code = END_REASONS.index("success")
    per_task: dict[str, list[bool]] = {}
    for t, _, r in finished:
        per_task.setdefault(format_task(t), []).append(r == success_code)
    reasons = np.bincount([r for *_, r in finished], minlength=len(END_REASONS))
    return {
        "episodes": len(finished),
        "success": float(reasons[success_code] / len(finished)),
        "mean_length": float(np.mean([n for _, n, _ in finished])),
        "per_task": {k: float(np.mean(v)) for k, v in sorted(per_task.items())},
        "end_reasons": {
            name: float(c / len(finished))
            for name, c in zip(END_REASONS, reasons, strict=True)
            if name != "running"
        },  # fmt: skip
    }


__all__ = [
    "PPOConfig",
    "evaluate_expert",
    "init_source",
    "ppo_update",
    "saved_ppo_config",
    "shaped_reward",
    "train_ant_expert",
]
