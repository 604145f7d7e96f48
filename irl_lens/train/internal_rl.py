"""Internal RL: reinforce latent codes on the switching timescale (paper Section 4, Alg. 1-3).

**Environment.** The frozen base model (split at the metacontroller's layer, key/value
caches kept over the whole episode by :class:`~irl_lens.rollout.engine.RolloutEngine`), the frozen
switching unit, GRU and decoder form the environment. An abstract action is a code ``z``;
it is held (``e_hat = e + U(z) e``) while raw env steps run, until the thresholded
switching unit fires (``beta_t >= threshold``) or the episode ends. The policy then reads
the residual ``e_t`` and proposes the next code.
:class:`~irl_lens.rollout.engine.MetacontrollerDriver` runs exactly this inside the batched
engine; :class:`AbstractRecorder` keeps, per episode,
the residuals the policy read, the codes it chose and their log-probabilities.

**Optimiser** (C.5.2). PPO's clipped surrogate without a critic. The advantage of a whole
trajectory is ``(R - mean(R)) / (std(R) + 1e-3)`` over the batch; every abstract step of
the trajectory gets it. Several epochs per batch, AdamW, no entropy bonus.

A run folder (``kind = "internal_rl"``) holds ``config.json``, ``policy.safetensors``,
``metrics.jsonl`` (one record per batch: ``episodes``, ``success``, ...), ``summary.json``,
``episodes.json`` (a sample of episodes with beta, codes and true subgoals) and checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from irl_lens import interrupts, runs
from irl_lens.envs.pinpad import format_task, parse_task
from irl_lens.models.metacontroller import StepCarry
from irl_lens.models.policy import InternalPolicy, PolicyConfig, build_policy
from irl_lens.rollout.engine import EnvKit, MetacontrollerDriver, RolloutEngine, StepState, env_kit
from irl_lens.train.discover import load_metacontroller

logger = logging.getLogger(__name__)

KIND = "internal_rl"


@dataclass
class RLConfig:
    """Shared by internal RL and raw-action RL (same optimiser, same budget)."""

    task: str = "post"
    """Task the env enforces (``post``: gridworld 0-1-2-3-4-5-6-7-0-1-2-3, ant 0-1-2-3)."""
    episodes: int = 1_000_000
    """Total episode budget."""
    batch_size: int = 1024
    """Episodes per PPO batch."""
    epochs: int = 4
    """PPO epochs per batch."""
    lr: float = 3e-5
    """AdamW learning rate (paper: 3e-5)."""
    weight_decay: float = 0.0
    clip: float = 0.2
    """PPO clipping range."""
    threshold: float = 0.5
    """Internal RL: switch when ``beta >= threshold``."""
    d_policy: int = 256
    """Internal RL: policy SSM width."""
    checkpoint_every: int = 20
    """Checkpoint every this many batches."""
    sample_episodes: int = 32
    """Episodes stored in ``episodes.json`` for the dashboard."""
    seed: int = 0

    def __post_init__(self) -> None:
        runs.check_finite_fields(self)
        parse_task(self.task)
        for name in ("episodes", "batch_size", "epochs", "checkpoint_every", "d_policy"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} must be > 0")
        if not 0 < self.clip < 1:
            raise ValueError(f"clip={self.clip!r} must lie in (0, 1)")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold={self.threshold!r} must lie in (0, 1]")

    @property
    def n_batches(self) -> int:
        return -(-self.episodes // self.batch_size)


def stream_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator that depends only on ``(seed, stream)`` (stream = batch index)."""
    value = int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])
    return torch.Generator().manual_seed(value)


def trajectory_advantages(returns: np.ndarray) -> np.ndarray:
    """``(R - mean) / (std + 1e-3)`` over the batch (C.5.2)."""
    returns = np.asarray(returns, dtype=np.float64)
    return (returns - returns.mean()) / (returns.std() + 1e-3)


def clipped_surrogate(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantage: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
) -> tuple[torch.Tensor, float, float]:
    """``(loss, clip fraction, approx KL)``: PPO's clipped objective, mean over ``mask``."""
    ratio = torch.exp(logp_new - logp_old)
    unclipped = ratio * advantage
    clipped = ratio.clamp(1 - clip, 1 + clip) * advantage
    n = mask.sum().clamp(min=1.0)
    loss = -(torch.minimum(unclipped, clipped) * mask).sum() / n
    with torch.no_grad():
        clip_frac = (((ratio - 1).abs() > clip).float() * mask).sum() / n
        approx_kl = ((logp_old - logp_new) * mask).sum() / n
    return loss, clip_frac.item(), approx_kl.item()


class AbstractRecorder:
    """Proposes codes from the policy at every switch and records the abstract steps."""

    def __init__(self, policy: InternalPolicy, n_envs: int, max_k: int, generator, device):
        self.policy = policy
        self.generator = generator
        d, nz = policy.cfg.d_model, policy.cfg.n_z
        self.e = torch.zeros(n_envs, max_k, d, device=device)
        self.z = torch.zeros(n_envs, max_k, nz, device=device)
        self.logp = torch.zeros(n_envs, max_k, device=device)
        self.k = np.zeros(n_envs, dtype=np.int64)
        self.state = torch.zeros(n_envs, policy.cfg.d_policy, device=device)

    def __call__(self, state: StepState, sel: torch.Tensor) -> torch.Tensor:
        sel_np = sel.cpu().numpy()
        envs = state.env_index[sel_np]
        envs_t = torch.from_numpy(envs).to(sel.device)
        e = state.resid[sel]
        h = self.state[envs_t] if state.t > 0 else None
        first = self.k[envs] == 0
        if h is not None and first.any():
            h = h.clone()
            h[torch.from_numpy(first).to(h.device)] = 0.0
        mean, log_std, h = self.policy.step(e, h)
        noise = torch.randn(mean.shape, generator=self.generator).to(mean.device)
        z = mean + log_std.exp() * noise
        k = torch.from_numpy(self.k[envs]).to(sel.device)
        self.e[envs_t, k] = e
        self.z[envs_t, k] = z
        self.logp[envs_t, k] = self.policy.log_prob(mean, log_std, z)
        self.state[envs_t] = h
        self.k[envs] += 1
        return z


@dataclass
class Batch:
    """One batch of internal-RL episodes, ready for the PPO update."""

    e: torch.Tensor  # [n, K, d_model] residuals the policy read
    z: torch.Tensor  # [n, K, n_z] codes chosen
    logp: torch.Tensor  # [n, K] log-probabilities at collection time
    mask: torch.Tensor  # [n, K] 1 on real abstract steps
    returns: np.ndarray  # [n]
    success: np.ndarray  # [n] bool
    length: np.ndarray  # [n] raw steps
    n_abstract: np.ndarray  # [n]
    seconds: float
    sample: list[dict]


def collect(
    kit: EnvKit,
    mc,
    policy: InternalPolicy,
    task,
    n_episodes: int,
    *,
    seed: int,
    stream: int,
    threshold: float,
    always_switch: bool,
    n_sample: int = 0,
) -> Batch:
    """Run ``n_episodes`` of internal RL with the current policy (no gradients), all in one
    batch of ``kit``'s environment (gridworld or ant)."""
    engine = kit.engine
    device = engine.device
    env = kit.make_env(n_episodes, task=task, seed=seed, stream=stream)
    gen = stream_generator(seed, stream)
    recorder = AbstractRecorder(policy, n_episodes, engine.model.cfg.n_ctx, gen, device)
    driver = MetacontrollerDriver(
        mc, threshold=threshold, propose=recorder, generator=gen, always_switch=always_switch,
        max_steps=kit.max_steps,
    )  # fmt: skip
    with torch.no_grad():
        ro = engine.run(env, controller_fn=driver, generator=gen)
    k_max = max(1, int(recorder.k.max()))
    mask = torch.from_numpy(np.arange(k_max)[None, :] < recorder.k[:, None]).float()
    sample = []
    for i in range(min(n_sample, n_episodes)):
        n = int(ro.length[i])
        sample.append(ro.episode(i) | {
            "beta": np.nan_to_num(driver.beta[i, :n]).round(4).tolist(),
            "switched": driver.switched[i, :n].tolist(),
            "codes": driver.codes[i, :n].round(3).tolist(),
        })  # fmt: skip
    return Batch(
        e=recorder.e[:, :k_max].cpu(),
        z=recorder.z[:, :k_max].cpu(),
        logp=recorder.logp[:, :k_max].cpu(),
        mask=mask,
        returns=ro.reward.sum(1),
        success=ro.success.copy(),
        length=ro.length.copy(),
        n_abstract=recorder.k.copy(),
        seconds=ro.seconds,
        sample=sample,
    )


def ppo_update(
    policy: InternalPolicy, opt: torch.optim.Optimizer, batch: Batch, cfg: RLConfig
) -> dict[str, float]:
    """Several epochs of the clipped surrogate on one batch; returns the last epoch's stats."""
    adv = torch.from_numpy(trajectory_advantages(batch.returns)).float()[:, None]
    device = next(policy.parameters()).device
    e, z, old, mask = (t.to(device) for t in (batch.e, batch.z, batch.logp, batch.mask))
    adv = adv.to(device)
    stats = {}
    for _ in range(cfg.epochs):
        mean, log_std = policy(e)
        new = policy.log_prob(mean, log_std, z)
        loss, clip_frac, approx_kl = clipped_surrogate(new, old, adv, mask, cfg.clip)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stats = {"loss": loss.item(), "clip_fraction": clip_frac, "approx_kl": approx_kl}
    return stats


def internal_rl(
    mc_path: str | Path,
    out: str | Path,
    cfg: RLConfig,
    *,
    device: str = "cpu",
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Train an internal-RL policy over the codes of the metacontroller in ``mc_path``."""
    out = Path(out)
    base, mc, mc_config = load_metacontroller(mc_path, device=device)
    layer = int(mc_config["layer"])
    always_switch = mc_config["train"]["variant"] == "beta1"
    pcfg = PolicyConfig(d_model=base.cfg.d_model, n_z=mc.cfg.n_z, d_policy=cfg.d_policy)
    policy = build_policy(pcfg, seed=cfg.seed).to(device)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    kit = env_kit(base, layer)
    task = kit.parse_task(cfg.task)
    config = {
        "kind": KIND,
        "version": runs.RUN_VERSION,
        "metacontroller": str(mc_path),
        "metacontroller_ref": runs.run_ref(mc_path, out, "metacontroller.safetensors"),
        "method": "internal_rl" + ("_beta1" if always_switch else ""),
        "variant": mc_config["train"]["variant"],
        "layer": layer,
        "task": format_task(task),
        "policy": pcfg.to_dict(),
        "train": dataclasses.asdict(cfg),
    }
    start = _start(out, config, resume, policy, opt)
    return _loop(
        out, cfg, start, opt, policy,
        collect_fn=lambda b, n_sample: collect(
            kit, mc, policy, task, cfg.batch_size, seed=cfg.seed,
            stream=b, threshold=cfg.threshold, always_switch=always_switch, n_sample=n_sample,
        ),
        update_fn=lambda batch: ppo_update(policy, opt, batch, cfg),
        stop_after=stop_after, progress=progress, desc="internal RL",
    )  # fmt: skip


# ------------------------------------------------------------------- shared loop machinery


_PATHS = ("metacontroller", "base_run")
"""Config keys holding a path as typed: a resume checks the weights' hash in their ``_ref``."""


def _start(out: Path, config: dict, resume: bool, module, opt) -> int:
    """Create the run folder (or resume it); return the first batch index to run."""
    same = [k for k in config if k not in _PATHS and not k.endswith("_ref")]
    ckpt = runs.start_run(out, config, resume=resume, compare=same)
    if resume:
        saved = runs.read_json(out / "config.json", "RL config")
        for key in (k for k in config if k.endswith("_ref")):
            if (saved.get(key) or {}).get("sha256") not in (None, config[key]["sha256"]):
                raise runs.RunError(f"--resume: {out} was trained from another {key[:-4]}")
    start = 0
    if ckpt is not None:
        runs.load_weights(module, ckpt / "model.safetensors")
        state = runs.load_trainer_state(ckpt, ("optimizer", "batch"))
        opt.load_state_dict(state["optimizer"])
        start = int(state["batch"])
    runs.truncate_metrics(out / "metrics.jsonl", "batch", start)
    return start


def _loop(out, cfg: RLConfig, start, opt, module, *, collect_fn, update_fn, stop_after, progress,
          desc) -> dict[str, float]:  # fmt: skip
    metrics_path = out / "metrics.jsonl"
    end = cfg.n_batches if stop_after is None else min(cfg.n_batches, start + stop_after)
    bar = tqdm(total=cfg.n_batches * cfg.batch_size, initial=start * cfg.batch_size, desc=desc,
               unit="ep", disable=not progress, dynamic_ncols=True)  # fmt: skip
    t_start = time.perf_counter()
    saved_at, b = start, start
    try:
        with interrupts.deferred() as stop:
            for b in range(start, end):
                t0 = time.perf_counter()
                last = b == cfg.n_batches - 1
                batch = collect_fn(b, cfg.sample_episodes if last else 0)
                t_collect = time.perf_counter() - t0
                stats = update_fn(batch)
                if not math.isfinite(stats["loss"]):
                    raise runs.NonFiniteError(
                        f"{desc}: the loss is not finite at batch {b + 1}; stopped without saving "
                        f"(last good checkpoint: batch {saved_at}); lower --lr"
                    )
                dt = time.perf_counter() - t0
                rec = {
                    "batch": b + 1,
                    "episodes": (b + 1) * cfg.batch_size,
                    "success": float(batch.success.mean()),
                    "abstract_steps": float(batch.n_abstract.mean()),
                    "raw_steps": float(batch.length.mean()),
                    "clip_fraction": stats["clip_fraction"],
                    "approx_kl": stats["approx_kl"],
                    "loss": stats["loss"],
                    "episodes_per_s": cfg.batch_size / dt,
                    "rollout_episodes_per_s": cfg.batch_size / max(t_collect, 1e-9),
                }
                runs.append_metrics(metrics_path, rec)
                bar.update(cfg.batch_size)
                bar.set_postfix(success=f"{rec['success']:.3f}", k=f"{rec['abstract_steps']:.1f}")
                if batch.sample:
                    runs.write_json(out / "episodes.json", {"episodes": batch.sample})
                if (b + 1) % cfg.checkpoint_every == 0 or b + 1 == cfg.n_batches or stop.signum:
                    runs.save_checkpoint(
                        out, b + 1, module, {"optimizer": opt.state_dict(), "batch": b + 1}
                    )
                    saved_at = b + 1
                if stop.signum:
                    raise interrupts.Interrupted(stop.signum, b + 1, saved_at)
    except interrupts.Interrupted as e:
        bar.close()
        e.step, e.checkpoint = e.step or b, saved_at
        raise
    bar.close()
    if end < cfg.n_batches:
        return {}
    runs.save_weights(module, out / "policy.safetensors")
    recs = runs.read_metrics(metrics_path)
    succ = [r["success"] for r in recs]
    eps = [r["episodes"] for r in recs]
    tail = succ[-max(1, len(succ) // 10) :]
    reached = next((e for e, s in zip(eps, succ, strict=True) if s >= 0.5), None)
    summary = {
        "rl/final_success": float(np.mean(tail)),
        "rl/max_success": float(max(succ)),
        "rl/episodes": float(eps[-1]),
        "rl/episodes_to_0.5": float(reached) if reached is not None else float("nan"),
        "rl/episodes_per_s": float(np.mean([r["episodes_per_s"] for r in recs])),
        "rl/rollout_episodes_per_s": float(np.mean([r["rollout_episodes_per_s"] for r in recs])),
        "rl/seconds": time.perf_counter() - t_start,
    }
    runs.write_json(out / "summary.json", summary)
    return summary


# ------------------------------------------------------------ single-episode gymnasium env


class InternalPinpadEnv:
    """Algorithms 1 and 2 for one episode, gymnasium-style: the action is a code ``z``.

    ``reset(seed)`` starts a gridworld episode, resets the key/value cache, the GRU state and
    ``z`` and returns the residual ``e_0`` at the metacontroller's layer. ``step(z)`` holds
    ``e_hat = e + U(z) e`` while it samples raw actions and steps the env, until the
    thresholded switching unit fires on the new residual or the episode ends; it returns
    ``(e, summed reward, terminated, truncated, info)`` with the raw actions taken.
    ``action_space`` is a ``Box`` over ``n_z`` floats.
    """

    def __init__(self, mc_path: str | Path, task="post", threshold: float = 0.5,
                 device: str = "cpu") -> None:  # fmt: skip
        import gymnasium as gym

        from irl_lens.envs.gridworld import BatchedGridPinpad

        self.base, self.mc, config = load_metacontroller(mc_path, device=device)
        if self.base.model_cfg.obs_kind != "grid":
            raise ValueError(
                f"InternalPinpadEnv steps one gridworld episode; {mc_path} is on another env "
                "(internal RL on ant runs batched: irl-lens internal-rl)"
            )
        self.layer = int(config["layer"])
        self.threshold = threshold
        self.task = parse_task(task)
        self.env = BatchedGridPinpad(1, task=self.task)
        self.engine = RolloutEngine(self.base, self.layer)
        n_z, d = self.mc.cfg.n_z, self.base.cfg.d_model
        self.action_space = gym.spaces.Box(-np.inf, np.inf, shape=(n_z,), dtype=np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(d,), dtype=np.float32)
        self.generator = torch.Generator()

    def _lower(self) -> torch.Tensor:
        from irl_lens.rollout.engine import obs_tokens

        return self.stepper.lower(obs_tokens(self.env).to(self.engine.device))  # [1, 1, d]

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict]:
        self.env.reset(seed=[int(seed)] if seed is not None else None)
        self.generator.manual_seed(0 if seed is None else int(seed))
        self.stepper = self.engine._stepper(1, self.base.cfg.n_ctx)
        self.carry = StepCarry(torch.zeros(1, self.mc.cfg.n_h), torch.zeros(1, self.mc.cfg.n_z))
        with torch.no_grad():
            self.e = self._lower()
        return self.e[0, 0].numpy().copy(), {"subgoal": int(self.env.target_colour()[0] // 2)}

    @torch.no_grad()
    def step(self, z) -> tuple[np.ndarray, float, bool, bool, dict]:
        z = torch.as_tensor(np.asarray(z, dtype=np.float32)).reshape(1, -1)
        total, actions, betas = 0.0, [], []
        self.carry = StepCarry(self.carry.h, z)
        while True:
            e_hat = self.mc.apply_code(self.e, z[:, None])
            logits = self.base.split(self.stepper.upper(e_hat)).action_params.float()
            u = torch.rand(1, 1, generator=self.generator)
            probs = torch.softmax(logits, -1)
            a = int((probs.cumsum(-1) < u).sum(-1).clamp(max=probs.shape[-1] - 1))
            actions.append(a)
            self.carry = StepCarry(self.mc.gru_step(self.e[:, 0], self.carry.h), z)
            _, r, term, trunc, _ = self.env.step(np.array([a]))
            total += float(r[0])
            if self.env.done[0]:
                info = {"actions": actions, "beta": betas, "success": bool(self.env.success[0])}
                return self.e[0, 0].numpy().copy(), total, bool(term[0]), bool(trunc[0]), info
            self.e = self._lower()
            beta = float(self.mc.switch_probability(self.e[:, 0], self.carry)[0])
            betas.append(beta)
            if beta >= self.threshold:
                info = {"actions": actions, "beta": betas, "success": False}
                return self.e[0, 0].numpy().copy(), total, False, False, info
