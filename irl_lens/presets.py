"""Presets: one frozen set of settings per (preset name, environment), for every stage.

This is the only place a preset name (``quick``, ``paper``, ``tiny``) is interpreted: the
commands and the pipeline read ``get(name, env)`` and override single fields with their
options. Sizes and step counts of ``paper`` are the paper's (Tables A4-A16, meant for a
GPU); ``quick`` fits the 2-core CPU (the gridworld pipeline in about an hour, measured in
``docs/results-gridworld.md``); ``tiny`` runs in seconds, for tests.

Example::

    from irl_lens import presets
    p = presets.get("quick", "gridworld")
    p.base.d_model, p.pretrain.steps, p.discover.steps, p.rl.episodes  # 128, 1200, 2000, 300000
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from irl_lens.envs.ant_layout import ANT_OBS_DIM
from irl_lens.models.base import BaseModelConfig
from irl_lens.train.commit import CommitConfig
from irl_lens.train.compile_fit import CompileFitConfig
from irl_lens.train.controllers import ControllerTrainConfig
from irl_lens.train.discover import DiscoverConfig
from irl_lens.train.pretrain import PretrainConfig
from irl_lens.train.rl import RLConfig

NAMES = ("quick", "paper", "tiny")
ENVS = ("gridworld", "ant")


@dataclass(frozen=True)
class Preset:
    """Every stage's settings for one preset name on one environment."""

    name: str
    env: str
    base: BaseModelConfig
    """The base model's architecture."""
    pretrain: PretrainConfig
    controllers: ControllerTrainConfig
    """Supervised controllers (one per subgoal and layer)."""
    discover: DiscoverConfig
    """Metacontroller training (the ELBO)."""
    rl: RLConfig
    """Internal RL and raw-action RL."""
    eval_episodes: int | None = None
    """Episodes of each closed-loop evaluation in the pipeline (``None``: each command's)."""
    compile_fit: CompileFitConfig = CompileFitConfig()
    """The CompILE baseline (``irl-lens compile``; issue 31): the discovery batch and rate."""
    seen_rl_episodes: int | None = None
    """The budget of each RL run on the seen-transition control task
    (:data:`~irl_lens.envs.pinpad.SEEN_TASK`; ``reproduce``, gridworld); ``None``: ``rl``'s."""
    commit: CommitConfig | None = None
    """The commitment refit of each metacontroller before internal RL (``irl-lens commit``,
    an addition to the paper: issue 29); ``None``: RL on the metacontrollers as discovered,
    as the paper does."""
    raw_rl_lr: float | None = None
    """Raw-action RL's learning rate where it differs from ``rl.lr`` (the paper sweeps the
    learning rate of each method); ``None``: ``rl.lr``."""


_GRID = {
    # Fits the 2-core CPU: pretraining about 15 minutes (907 s measured, 2 threads). The
    # encoder's path features hand the board's shortest paths to the model, so this budget
    # is spent on which colour comes next (GridObservationEncoder).
    "quick": Preset(
        "quick", "gridworld",
        base=BaseModelConfig(
            d_model=128, n_layers=4, n_heads=4, d_mlp=256, d_cell=16, path_features=True
        ),
        pretrain=PretrainConfig(
            steps=1200, tokens_per_batch=8192, lr=2e-3, warmup_steps=100, eval_every=400,
            checkpoint_every=200,
        ),
        controllers=ControllerTrainConfig(steps=600, lr=3e-3, tokens_per_batch=4096),
        discover=DiscoverConfig(
            steps=2000, tokens_per_batch=4096, lr=3e-3, eval_every=500, checkpoint_every=250,
            kl_free_steps=200, kl_warmup_steps=600,
        ),
        # the CPU: a larger step size so that a few hundred batches suffice
        # 300k: internal RL on the committed `full` reaches 0.5 on `post` after ~175k
        # episodes (median of 3 seeds, docs/experiments-log.md)
        rl=RLConfig(episodes=300_000, batch_size=1024, lr=1e-3, d_policy=64),
        # on the seen-transition task the committed `full` reaches 0.5 after ~69k episodes
        seen_rl_episodes=102_400,
        # the commitment refit (voronoi): compositional steering on `post` 0.000 -> ~0.5-0.76
        commit=CommitConfig(),
        # the CompILE baseline at the KL weight its sweep chose: at 0.01 and 0.1 the latents
        # carry ~nothing (0.05 and 0.0006 nats/step; docs/experiments-log.md)
        compile_fit=CompileFitConfig(beta_z=0.001),
    ),
    # Paper, Table A4/A16: d_model 256, 6 layers, 4 heads of 64, MLP 512, lr 3e-4 constant,
    # wd 0.03, batch 1024 sequences (~40k tokens), 256k steps; RL: C.5.2 (grid), batch
    # 1024, lr 3e-5, 1M episodes. Meant for a GPU.
    "paper": Preset(
        "paper", "gridworld",
        base=BaseModelConfig(d_model=256, n_layers=6, n_heads=4, d_mlp=512, d_cell=32),
        pretrain=PretrainConfig(
            steps=256_000, tokens_per_batch=40_960, lr=3e-4, warmup_steps=0,
            schedule="constant", eval_every=8000, checkpoint_every=16_000,
        ),
        controllers=ControllerTrainConfig(steps=3200, lr=1e-3, tokens_per_batch=16384),
        discover=DiscoverConfig(
            steps=64_000, tokens_per_batch=16_384, eval_every=4000, checkpoint_every=4000
        ),
        rl=RLConfig(episodes=1_000_000, batch_size=1024, lr=3e-5),
    ),
    # For tests: seconds on a CPU.
    "tiny": Preset(
        "tiny", "gridworld",
        base=BaseModelConfig(d_model=32, n_layers=2, n_heads=2, d_mlp=64, d_cell=8),
        pretrain=PretrainConfig(
            steps=40, tokens_per_batch=1024, lr=1e-2, warmup_steps=5, val_episodes=40,
            eval_every=20, checkpoint_every=20, rollout_episodes=32,
        ),
        controllers=ControllerTrainConfig(
            steps=10, lr=3e-3, tokens_per_batch=1024, val_episodes=20, log_every=5
        ),
        discover=DiscoverConfig(
            steps=12, tokens_per_batch=1024, lr=3e-3, val_episodes=16, eval_every=6,
            log_every=3, checkpoint_every=6,
        ),
        rl=RLConfig(
            episodes=64, batch_size=16, lr=1e-3, d_policy=16, epochs=2, checkpoint_every=2,
            sample_episodes=4,
        ),
        commit=CommitConfig(steps=4, tokens_per_batch=1024, cell_batches=2, val_episodes=16),
        compile_fit=CompileFitConfig(
            steps=12, tokens_per_batch=1024, val_episodes=16, log_every=3, checkpoint_every=6
        ),
    ),
}  # fmt: skip

# ant-pinpad: episodes run to T = 500 steps and the base predicts the next observation with
# weight lambda = 10 (Table A5); no board to find paths on. The quick pipeline trains its
# controllers and metacontrollers for fewer steps (an ant step costs ~20x a grid step) and
# runs RL and evaluations on smaller budgets (an episode is up to 500 MuJoCo steps).
# The observation fields are ant's, as its data will set them (the next-colour head checks).
_ANT_BASE = {"n_ctx": 500, "obs_loss_weight": 10.0, "path_features": False,
             "obs_kind": "vector", "obs_dim": ANT_OBS_DIM}  # fmt: skip
# the paper's ant base (Section 2): a Hawk SSM, 256 units, 8 heads, MLP 512, depth 8. The
# quick preset: a Hawk base of the quick size with two CPU-budget aids (issue 32;
# docs/experiments-log.md): the ant path features (each colour's shortest-path direction in
# the torso's frame), without which it walks into walls, and a next-colour head (weight
# 10), without which no layer holds the target colour and no controller moves it; trained
# 2,400 steps on 8,000 episodes (reproduce's ant default), since on 2,000 the head costs
# the walk; and the colour under the torso as a vector in the stream (underfoot features),
# without which no linear readout of the control layer finds a colour entry and the
# metacontroller's switch does not align. The package ships it (irl_lens.models.shipped).
# The tiny preset keeps the transformer.
_ANT_ARCH = {
    "paper": {"arch": "hawk", "d_model": 256, "n_heads": 8, "d_mlp": 512, "n_layers": 8},
    "quick": {
        "arch": "hawk",
        "path_features": True,
        "next_colour_weight": 10.0,
        "underfoot_features": True,
    },
    "tiny": {},
}
_ANT_PRETRAIN = {"paper": {"steps": 204_800, "tokens_per_batch": 512 * 500},
                 "quick": {"steps": 2400}, "tiny": {}}  # fmt: skip
"""The paper's ant pretraining: 204.8k steps of 512 episodes (of up to 500 steps)."""
_ANT_STEPS = {"quick": {"controllers": 300, "discover": 2400}, "paper": {}, "tiny": {}}
# quick ant discovery (docs/experiments-log.md, eleventh session: on the underfoot base it
# switches at the colour entries, F1 0.995): 800 KL-free steps and an 800-step ramp, alpha
# 1, the KL charged where the switch fires; reproduce adds layer 1, a Gumbel switch and the
# embedder on the top layer (ant_stages)
_ANT_DISCOVER = {"quick": {"alpha": 1.0, "rate": "switch", "kl_free_steps": 800,
                           "kl_warmup_steps": 800}, "paper": {}, "tiny": {}}  # fmt: skip
# quick: internal RL on 0-1-2-3 starts succeeding after about 10,000 episodes and reaches
# 0.10-0.14 at 25,600 (3 seeds; raw-action RL 0.000-0.0004 at 25,600, three learning
# rates; eleventh and twelfth sessions)
_ANT_RL_EPISODES = {"quick": 25_600, "paper": 1_000_000, "tiny": 32}
# quick: raw-action RL at the paper's 3e-5, not internal RL's 1e-3: finetuning the whole
# base at 1e-3, its first rewarded batch moved the policy by an approximate KL of 34 and it
# never succeeded again (episodes ran out the clock); at 3e-5 it keeps walking (0.0004 at
# 25,600 episodes against 0.000; twelfth session)
_ANT_RAW_RL_LR = {"quick": 3e-5, "paper": None, "tiny": None}
_ANT_EVAL_EPISODES = {"quick": 500, "paper": 1000, "tiny": 4}
ANT_RL_BATCH = 256
"""Episodes per PPO batch on ant (the paper's ant batch; fewer when the budget is smaller)."""


def _ant(grid: Preset) -> Preset:
    steps = _ANT_STEPS[grid.name]
    return dataclasses.replace(
        grid,
        env="ant",
        base=dataclasses.replace(grid.base, **(_ANT_BASE | _ANT_ARCH[grid.name])),
        pretrain=dataclasses.replace(grid.pretrain, **_ANT_PRETRAIN[grid.name]),
        controllers=dataclasses.replace(
            grid.controllers, steps=steps.get("controllers", grid.controllers.steps)
        ),
        # the KL schedule keeps its shape: its free and ramp steps scale with the run
        discover=dataclasses.replace(
            grid.discover.with_steps(steps.get("discover", grid.discover.steps)),
            **_ANT_DISCOVER[grid.name],
        ),
        rl=dataclasses.replace(
            grid.rl,
            episodes=_ANT_RL_EPISODES[grid.name],
            batch_size=min(ANT_RL_BATCH, _ANT_RL_EPISODES[grid.name]),
        ),
        raw_rl_lr=_ANT_RAW_RL_LR[grid.name],
        eval_episodes=_ANT_EVAL_EPISODES[grid.name],
        # the refit is measured on the gridworld only
        commit=None,
        seen_rl_episodes=None,  # the seen-transition control runs on the gridworld only
    )


_PRESETS = {(name, "gridworld"): p for name, p in _GRID.items()} | {
    (name, "ant"): _ant(p) for name, p in _GRID.items()
}


def get(name: str, env: str = "gridworld") -> Preset:
    """The preset ``name`` for ``env``; a one-line ``ValueError`` naming what is allowed."""
    if (name, env) not in _PRESETS:
        if env not in ENVS:
            raise ValueError(f"env {env!r}: allowed {', '.join(ENVS)}")
        raise ValueError(f"preset {name!r}: allowed {', '.join(NAMES)}")
    return _PRESETS[(name, env)]


PRETRAIN = {name: (get(name).base, get(name).pretrain) for name in NAMES}
"""Gridworld (base model, pretraining) settings by name: a view of the presets above."""
DISCOVER = {name: get(name).discover for name in NAMES}
"""Gridworld discovery settings by name: a view of the presets above."""
CONTROLLERS = {name: get(name).controllers for name in NAMES}
"""Gridworld controller-training settings by name: a view of the presets above."""
