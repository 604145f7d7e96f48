"""Internal RL: reinforce latent codes on the switching timescale (paper Section 4, Alg. 1-3).

**Environment.** The frozen base model (split at the metacontroller's layer, key/value
caches kept over the whole episode by the batched rollout engine), the frozen switching
unit, GRU and decoder form the environment. An abstract action is a code ``z``; it is held
(``e_hat = e + U(z) e``) while raw env steps run, until the thresholded switching unit
fires (``beta_t >= threshold``) or the episode ends. The policy then reads the residual
``e_t`` and proposes the next code.
:class:`~irl_lens.rollout.switchers.MetacontrollerDriver` runs exactly this inside the
batched engine; :class:`AbstractRecorder` keeps, per episode, the residuals the policy
read, the codes it chose and their log-probabilities.

**Optimiser** (C.5.2). PPO's clipped surrogate without a critic (:mod:`irl_lens.train.rl`,
which also runs the batches, checkpoints and metrics). The advantage of a whole trajectory
is ``(R - mean(R)) / (std(R) + 1e-3)`` over the batch; every abstract step of the
trajectory gets it. Several epochs per batch, AdamW, no entropy bonus.

A run folder (``kind = "internal_rl"``) holds ``config.json``, ``policy.safetensors``,
``metrics.jsonl`` (one record per batch: ``episodes``, ``success``, ...), ``summary.json``,
``episodes.json`` (a sample of episodes with beta, codes and true subgoals) and checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from irl_lens import runs
from irl_lens.envs.gridworld_batch import BatchedGridPinpad
from irl_lens.envs.pinpad import format_task, parse_task
from irl_lens.models.compile_model import KIND as COMPILE_KIND
from irl_lens.models.metacontroller import StepCarry
from irl_lens.models.policy import InternalPolicy, PolicyConfig, build_policy
from irl_lens.rollout.engine import StepState
from irl_lens.rollout.grid import GridRolloutEngine as RolloutEngine
from irl_lens.rollout.grid import obs_tokens
from irl_lens.rollout.kit import EnvKit, env_kit
from irl_lens.rollout.switchers import FixedIntervalDriver, MetacontrollerDriver
from irl_lens.train import rl
from irl_lens.train.compile_fit import WEIGHTS as COMPILE_WEIGHTS
from irl_lens.train.compile_fit import load_compile
from irl_lens.train.discover import load_metacontroller

logger = logging.getLogger(__name__)


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
    every: int | None = None,
) -> Batch:
    """Run ``n_episodes`` of internal RL with the current policy (no gradients), all in one
    batch of ``kit``'s environment (gridworld or ant). ``every``: a code model without a
    switching unit (CompILE) takes a new code every ``every`` raw steps."""
    engine = kit.engine
    device = engine.device
    env = kit.make_env(n_episodes, task=task, seed=seed, stream=stream)
    gen = rl.stream_generator(seed, stream)
    recorder = AbstractRecorder(policy, n_episodes, engine.model.cfg.n_ctx, gen, device)
    kw = dict(threshold=threshold, propose=recorder, generator=gen,
              always_switch=always_switch, max_steps=kit.max_steps)  # fmt: skip
    if every is None:
        driver = MetacontrollerDriver(mc, **kw)
    else:
        driver = FixedIntervalDriver(mc, every=every, **kw)
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
    policy: InternalPolicy, opt: torch.optim.Optimizer, batch: Batch, cfg: rl.RLConfig
) -> dict[str, float]:
    """``cfg.epochs`` whole-batch steps of :func:`irl_lens.train.rl.ppo_update` with
    episode-return advantages; returns the last epoch's stats."""
    device = next(policy.parameters()).device
    b_e, b_z = batch.e.to(device), batch.z.to(device)  # [n, K, d_model], [n, K, n_z]
    advantages = torch.from_numpy(rl.trajectory_advantages(batch.returns)).float()[:, None]
    data = rl.PPOBatch(
        logp=batch.logp.to(device), advantages=advantages.to(device), mask=batch.mask.to(device)
    )

    def evaluate(piece: rl.Piece) -> rl.PolicyEval:
        mean, log_std = policy(piece.take(b_e))
        return rl.PolicyEval(logp=policy.log_prob(mean, log_std, piece.take(b_z)))

    last = rl.ppo_update(evaluate, opt, data, cfg.ppo)[-1]
    return {"loss": last.loss, "clip_fraction": last.clip_fraction, "approx_kl": last.approx_kl}


def internal_rl(
    mc_path: str | Path,
    out: str | Path,
    cfg: rl.RLConfig,
    *,
    device: str = "cpu",
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Train an internal-RL policy over the codes of the metacontroller in ``mc_path``."""
    out = Path(out)
    every, weights = None, "metacontroller.safetensors"
    if runs.read_json(Path(mc_path) / "config.json", "run config").get("kind") == COMPILE_KIND:
        loaded = load_compile(mc_path, device=device)  # CompILE (issue 31)
        base, mc, mc_config = loaded.base, loaded.model, loaded.config
        summary_path = Path(mc_path) / "summary.json"
        summary = runs.read_json(summary_path, "CompILE summary") if summary_path.is_file() else {}
        if not isinstance(summary.get("segments/mean_steps"), int | float):
            raise runs.RunError(
                f"{mc_path}: its summary.json has no segments/mean_steps (the segment length "
                "internal RL uses); re-analyse it: its irl-lens compile command with --resume"
            )
        every, weights = max(1, round(summary["segments/mean_steps"])), COMPILE_WEIGHTS
        mc_config = mc_config | {"train": mc_config["train"] | {"variant": "compile"}}
    else:
        base, mc, mc_config = load_metacontroller(mc_path, device=device)
    layer = int(mc_config["layer"])
    always_switch = mc_config["train"]["variant"] == "beta1"
    pcfg = PolicyConfig(d_model=base.cfg.d_model, n_z=mc.cfg.n_z, d_policy=cfg.d_policy)
    policy = build_policy(pcfg, seed=cfg.seed).to(device)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    kit = env_kit(base, layer)
    task = kit.parse_task(cfg.task)
    config = {
        "kind": rl.KIND,
        "version": runs.RUN_VERSION,
        "metacontroller": str(mc_path),
        "metacontroller_ref": runs.run_ref(mc_path, out, weights),
        "method": "internal_rl" + ("_beta1" if always_switch else ""),
        "variant": mc_config["train"]["variant"],
        "segment_steps": every,
        "layer": layer,
        "task": format_task(task),
        "policy": pcfg.to_dict(),
        "train": dataclasses.asdict(cfg),
    }
    start = rl.create_or_resume(out, config, resume, policy, opt)
    return rl.batch_loop(
        out, cfg, start, opt, policy,
        collect_fn=lambda b, n_sample: collect(
            kit, mc, policy, task, cfg.batch_size, seed=cfg.seed,
            stream=b, threshold=cfg.threshold, always_switch=always_switch, n_sample=n_sample,
            every=every,
        ),
        update_fn=lambda batch: ppo_update(policy, opt, batch, cfg),
        stop_after=stop_after, progress=progress, desc="internal RL",
    )  # fmt: skip


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
