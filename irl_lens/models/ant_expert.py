"""The ant-pinpad expert network and its loader (paper App. C.1.1).

One Gaussian MLP agent (:class:`GaussianAgent`: actor and critic on normalised inputs)
walks the ant to the next waypoint of the grid-level shortest path, seen in a *canonical
frame* (:meth:`~irl_lens.envs.ant_batch.BatchedAntPinpad.expert_view`: the state turned by a
multiple of 90 degrees until the waypoint lies ahead; :meth:`ExpertInput.controls` turns
its actions back). :mod:`irl_lens.train.ant_expert` trains it with PPO;
:mod:`irl_lens.data.generate_ant` rolls it out into datasets.

A trained expert is a folder (``config.json`` with ``kind = "ant_expert"``, its training
settings under ``ppo``, ``model.safetensors`` or checkpoints), or the one shipped in the
package (:data:`SHIPPED_EXPERT` with an ``ant_expert.json`` card). Of those settings,
:class:`ExpertConfig` rebuilds the network and says how it acts.

Pieces, top to bottom: :class:`ExpertConfig`, :class:`RunningNorm`, :class:`GaussianAgent`,
:func:`build_agent`, :class:`ExpertInput`, :func:`expert_inputs`, then the loader:
:data:`SHIPPED_EXPERT`, :func:`expert_weights`, :func:`saved_expert_config`,
:func:`check_cell_size`, :func:`load_expert`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from irl_lens import runs
from irl_lens.envs.ant_batch import EXPERT_DIM, BatchedAntPinpad
from irl_lens.envs.ant_layout import CELL_SIZE
from irl_lens.models.common import DictConfig, build_seeded


@dataclass
class ExpertConfig(DictConfig):
    """The expert's size and torque scales: what rebuilds a trained expert and how it acts.
    The trainer's :class:`~irl_lens.train.ant_expert.PPOConfig` extends it, and a saved
    expert keeps all of its fields under ``ppo``."""

    hidden: int = 256
    """Width of the two hidden layers of actor and critic."""
    init_log_std: float = -0.3
    """Log standard deviation of the Gaussian at initialisation (then a learnt parameter)."""
    torque_scale: float = 0.7
    """In training, the expert's joint torques are its actions clipped to [-1, 1] times this
    (a fraction of the actuators' range). The ant's motors (gear 150) can throw it above the
    1.0 m height limit; PPO finds gaits that bounce to the limit of whatever torque it has
    (at 1.0 the torso rose and fell between 0.4 and 0.7 m every stride, and a sixth of the
    episodes ended in a hop above 1.0 m). After 5M steps (seed 0, 500 episodes, pretraining
    tasks / 0-1-2-3, acting at the training scale): 1.0: 0.530 / 0.422; 0.8: 0.486 / 0.368;
    0.7: 0.682 / 0.556 (seed 1: 0.554 / 0.482); 0.6: 0.610 / 0.530. Lower scales also learn
    faster (training success at 1.2M steps: 0.20, 0.27, 0.39, 0.48). See
    :attr:`deploy_torque_scale` for the larger gain."""
    deploy_torque_scale: float | None = 0.5
    """Torque scale when the trained expert acts (evaluation, datasets, the shipped expert);
    None: :attr:`torque_scale`. Acting weaker than it trained softens the bounces it learned.
    Success (pretraining tasks / 0-1-2-3, 300 episodes each, eval seed 11) when acting at 0.5,
    0.55, 0.6: trained at 0.7, seed 0: 0.800 / 0.700, 0.777 / 0.693, 0.78 / 0.695 (200
    episodes, eval seed 5); seed 1: 0.737 / 0.640, 0.730 / 0.610, 0.683 / 0.603; trained at 0.6 and
    acting at 0.45, 0.5, 0.55: 0.700 / 0.610, 0.733 / 0.640, 0.693 / 0.607. The expert
    trained at 1.0 (before these fields) succeeds on the pretraining tasks 0.512 at 1.0, 0.609
    at 0.9, 0.699 at 0.8, 0.637 at 0.7 and 0.469 at 0.6 (256 episodes; above 1.0 m: 0.168,
    0.098, 0.059, 0.035, 0.027, while timeouts rise from 0.08 to 0.34)."""

    def __post_init__(self) -> None:
        runs.check_finite_fields(self)
        for name in ("torque_scale", "deploy_torque_scale"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"{type(self).__name__}.{name}={value!r} must be in (0, 1]")


class RunningNorm(nn.Module):
    """Running mean/variance of the inputs (buffers, so they are saved with the weights)."""

    def __init__(self, dim: int, clip: float = 10.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))
        self.clip = clip

    def update(self, x: torch.Tensor) -> None:
        x = x.double()
        b_mean, b_var, b_n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta = b_mean - self.mean
        total = self.count + b_n
        self.mean += delta * b_n / total
        m2 = self.var * self.count + b_var * b_n + delta**2 * self.count * b_n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean.float()) / torch.sqrt(self.var.float() + 1e-8)
        return z.clamp(-self.clip, self.clip)


def _mlp(d_in: int, hidden: int, d_out: int, out_gain: float) -> nn.Sequential:
    layers = [nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()]
    head = nn.Linear(hidden, d_out)
    for layer in [*layers[::2], head]:
        nn.init.orthogonal_(layer.weight, gain=np.sqrt(2) if layer is not head else out_gain)
        nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers, head)


class GaussianAgent(nn.Module):
    """Actor (diagonal Gaussian, state-independent log-std) and critic MLPs on normalised input.

    ``torque_scale`` is how its actions become torques (:attr:`ExpertConfig.torque_scale` in
    training, :attr:`ExpertConfig.deploy_torque_scale` once loaded); it is part of the expert,
    so every caller passes it to :meth:`ExpertInput.controls`.
    """

    def __init__(
        self, d_in: int, n_actions: int, hidden: int, init_log_std: float,
        torque_scale: float = 1.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.torque_scale = float(torque_scale)
        self.norm = RunningNorm(d_in)
        self.actor = _mlp(d_in, hidden, n_actions, out_gain=0.01)
        self.critic = _mlp(d_in, hidden, 1, out_gain=1.0)
        self.log_std = nn.Parameter(torch.full((n_actions,), float(init_log_std)))

    def distribution(self, x: torch.Tensor) -> torch.distributions.Normal:
        mean = self.actor(self.norm(x))
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(self.norm(x)).squeeze(-1)

    @torch.no_grad()
    def act(self, x: torch.Tensor, deterministic: bool, generator=None) -> torch.Tensor:
        dist = self.distribution(x)
        if deterministic:
            return dist.mean
        noise = torch.randn(dist.mean.shape, generator=generator)
        return dist.mean + dist.stddev * noise


def build_agent(cfg: ExpertConfig, seed: int) -> GaussianAgent:
    """A freshly initialised agent of ``cfg``'s size, acting at its training torque scale
    (torch's global RNG untouched)."""
    return build_seeded(
        lambda: GaussianAgent(EXPERT_DIM, 8, cfg.hidden, cfg.init_log_std, cfg.torque_scale), seed
    )


@dataclass
class ExpertInput:
    """What the expert sees at one step (:meth:`BatchedAntPinpad.expert_view`)."""

    x: torch.Tensor
    """``float32[n, EXPERT_DIM]`` canonical-frame features (the agent's input)."""
    quadrant: np.ndarray
    """``int64[n]`` canonical frame per env; :meth:`controls` maps actions back with it."""
    waypoint: np.ndarray
    """``float64[n, 2]`` world unit vector to the next waypoint (for the shaped reward)."""

    def controls(
        self, env: BatchedAntPinpad, actions: torch.Tensor, torque_scale: float
    ) -> np.ndarray:
        """Actuator commands ``float64[n, 8]`` for the agent's canonical ``actions``: clipped
        to [-1, 1] (MuJoCo clips them there anyway) and times the agent's ``torque_scale``."""
        torques = np.clip(actions.numpy().astype(np.float64), -1.0, 1.0) * torque_scale
        return env.controls(torques, self.quadrant)


def expert_inputs(env: BatchedAntPinpad) -> ExpertInput:
    """The expert's view of ``env``'s current states (call once per step: it advances the
    canonical frame's hysteresis)."""
    feats, quadrant, way = env.expert_view()
    return ExpertInput(torch.from_numpy(feats), quadrant, way)


SHIPPED_EXPERT = Path(__file__).resolve().parents[1] / "assets" / "ant_expert.safetensors"
"""The expert shipped in the package; ``ant_expert.json`` beside it says how it was made."""


def expert_weights(run: str | Path) -> Path:
    """An expert run's final weights, else those of its last checkpoint."""
    run = Path(run)
    weights = run / "model.safetensors"
    if weights.is_file():
        return weights
    ckpts = runs.checkpoint_dirs(run)
    if not ckpts:
        raise runs.RunError(
            f"{run} has no model.safetensors or checkpoint; continue it with "
            "`irl-lens expert ant --out RUN --resume`"
        )
    return ckpts[-1] / "model.safetensors"


LEGACY_CELL_SIZE = 1.5
"""The arena's cell side before ``cell_size`` was saved with each expert."""
LEGACY_TORQUE_SCALE = 1.0
"""The expert's torque scale (training and deployed) before :attr:`ExpertConfig.torque_scale`
existed."""


LEGACY_FIELDS = {"torque_scale": LEGACY_TORQUE_SCALE, "deploy_torque_scale": None}
"""What a saved expert lacking these fields trained and acts with (it predates them)."""


def saved_expert_config(ppo: dict) -> ExpertConfig:
    """The :class:`ExpertConfig` of a saved expert's ``ppo`` settings (run config or card);
    the trainer's fields are left to :func:`irl_lens.train.ant_expert.saved_ppo_config`.
    Fields it lacks take their default, except the torque scales
    (:data:`LEGACY_FIELDS`)."""
    known = {f.name for f in dataclasses.fields(ExpertConfig)}
    return ExpertConfig.from_dict({k: v for k, v in (LEGACY_FIELDS | ppo).items() if k in known})


def deployed_torque_scale(cfg: ExpertConfig) -> float:
    """The torque scale a trained expert acts with (:attr:`ExpertConfig.deploy_torque_scale`)."""
    return cfg.torque_scale if cfg.deploy_torque_scale is None else cfg.deploy_torque_scale


def check_cell_size(config: dict, what: str) -> None:
    """Raise a :class:`~irl_lens.runs.RunError` when an expert's config (or card) was
    trained in cells of another size than this version's arena
    (:data:`~irl_lens.envs.ant_layout.CELL_SIZE`): its gait and turns are tuned to its cells."""
    trained = float(config.get("cell_size", LEGACY_CELL_SIZE))
    if trained != CELL_SIZE:
        raise runs.RunError(
            f"{what}: this expert was trained in {trained} m cells, but this version's "
            f"ant-pinpad arena has {CELL_SIZE} m cells; train a new one with "
            "`irl-lens expert ant --out DIR` (or use the shipped expert)"
        )


def load_expert(run: str | Path | None = None) -> GaussianAgent:
    """The ant expert: from an ``irl-lens expert`` run folder, or the shipped one (None)."""
    if run is None:
        weights, meta_path = SHIPPED_EXPERT, SHIPPED_EXPERT.with_suffix(".json")
        if not weights.is_file():
            raise runs.RunError(
                f"the package has no shipped ant expert ({weights}); train one with "
                "`irl-lens expert ant --out DIR` and pass --expert DIR"
            )
        card = runs.read_json(meta_path, "shipped expert card")
        check_cell_size(card, f"the shipped expert ({weights})")
        cfg = saved_expert_config(card["ppo"])
    else:
        run = Path(run)
        config = runs.read_json(run / "config.json", "expert run config")
        if config.get("kind") != "ant_expert":
            raise runs.RunError(f"{run} is a {config.get('kind')!r} run, not an ant_expert run")
        check_cell_size(config, str(run))
        cfg = saved_expert_config(config["ppo"])
        weights = expert_weights(run)
    agent = GaussianAgent(EXPERT_DIM, 8, cfg.hidden, cfg.init_log_std, deployed_torque_scale(cfg))
    runs.load_weights(agent, weights)
    agent.eval()
    return agent
