"""ant-pinpad's MuJoCo arena: gymnasium's ant, the floor, boundary walls, tiles and the wall.

The agent is the standard quadruped Gymnasium ships (``gymnasium/envs/mujoco/assets/ant.xml``,
torque control on 8 joints), integrated with MuJoCo's ``implicitfast`` instead of the
file's RK4 (3.2x faster; see :func:`build_arena`). The arena is built with
``mujoco.MjSpec``: a ``4 x 4`` grid of square cells of side
:data:`~irl_lens.envs.ant_layout.CELL_SIZE`, boundary walls around it, 4 coloured floor
tiles (visual only, no collisions) and 1 wall cell (a box that collides). Tiles and the
wall are static bodies compiled once (:func:`compiled_arena`); each env of
:class:`~irl_lens.envs.ant_batch.BatchedAntPinpad` holds a copy of the model in which they
sit where its layout puts them (``body_pos``).

Importing this module imports MuJoCo. ``MUJOCO_GL`` defaults to ``egl`` for headless
rendering.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import gymnasium as gym
import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")  # must precede `import mujoco` on a headless box
import mujoco  # noqa: E402

from irl_lens.envs.ant_layout import ANT_GRID_SIZE, CELL_SIZE, TILE_RGBA  # noqa: E402
from irl_lens.envs.pinpad import ANT_N_COLOURS  # noqa: E402

__all__ = ["WALL_HEIGHT", "build_arena", "compiled_arena", "start_pose"]

WALL_HEIGHT = 0.3
"""Height of the wall cell's box and the boundary walls. Below the legs at the start, and
low enough that a leg resting on a wall does not prop the torso above 1.0 (at 0.5 it does)."""


def _ant_xml() -> Path:
    return Path(gym.__file__).parent / "envs" / "mujoco" / "assets" / "ant.xml"


def build_arena(cell_size: float = CELL_SIZE) -> mujoco.MjSpec:
    """The arena as an (uncompiled) ``MjSpec``: gymnasium's ant + floor, boundary, tiles, wall.

    Static bodies ``tile_0..3`` (visual-only boxes) and ``wall_0`` (colliding box) start
    below the floor; each env moves them to its layout in its own copy of the model.
    """
    spec = mujoco.MjSpec.from_file(str(_ant_xml()))
    # ant.xml asks for RK4 (4 dynamics evaluations per step). MuJoCo's implicitfast at the
    # same 0.01 s step is stable for the ant and 3.2x faster here (64 envs: 12.7k vs 4.0k
    # env steps/s), which triples the PPO expert's samples per hour of CPU.
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    half = ANT_GRID_SIZE * cell_size / 2
    floor = spec.geom("floor")
    floor.size = [half + 2.0, half + 2.0, 0.1]
    world = spec.worldbody
    for i, (x, y, sx, sy) in enumerate(
        (
            (0.0, half + 0.1, half + 0.2, 0.1),
            (0.0, -half - 0.1, half + 0.2, 0.1),
            (half + 0.1, 0.0, 0.1, half + 0.2),
            (-half - 0.1, 0.0, 0.1, half + 0.2),
        )
    ):
        world.add_geom(
            name=f"boundary_{i}",
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[sx, sy, WALL_HEIGHT / 2],
            pos=[x, y, WALL_HEIGHT / 2],
            rgba=[0.45, 0.45, 0.45, 1.0],
            conaffinity=1,
            contype=1,
        )
    for c in range(ANT_N_COLOURS):
        body = world.add_body(name=f"tile_{c}", pos=[0, 0, -10])
        body.add_geom(
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[cell_size / 2 * 0.96, cell_size / 2 * 0.96, 0.002],
            rgba=list(TILE_RGBA[c]),
            contype=0,
            conaffinity=0,
        )
    wall = world.add_body(name="wall_0", pos=[0, 0, -10])
    wall.add_geom(
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=[cell_size / 2, cell_size / 2, WALL_HEIGHT / 2],
        rgba=[0.3, 0.3, 0.3, 1.0],
        contype=1,
        conaffinity=1,
    )
    return spec


@functools.lru_cache(maxsize=4)
def compiled_arena(cell_size: float) -> mujoco.MjModel:
    """:func:`build_arena` compiled, cached per cell size (each env copies it)."""
    return build_arena(cell_size).compile()


def start_pose(model: mujoco.MjModel) -> np.ndarray:
    """``qpos`` the episodes start around: ``model.qpos0`` with the 8 joint angles moved to
    at least 0.1 rad inside their ranges, so the ``+-0.1`` start noise never violates a limit."""
    qpos = model.qpos0.copy()
    joints = np.flatnonzero(model.jnt_type == mujoco.mjtJoint.mjJNT_HINGE)
    lo, hi = model.jnt_range[joints].T
    adr = model.jnt_qposadr[joints]
    qpos[adr] = np.clip(qpos[adr], lo + 0.1, hi - 0.1)
    return qpos
