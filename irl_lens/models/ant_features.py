"""Path features of an ant-pinpad observation: a CPU-budget aid for the ant base (issue 32).

Like the gridworld's path features (:func:`irl_lens.models.base.path_features`) these are a
fixed function of the paper's observation, adding no information: the 41 numbers
(:func:`irl_lens.envs.ant_layout.ant_observations`) already hold the torso's position, its
orientation (the symlogged quaternion) and every object's offset, hence the layout. From
them, per colour ``c``:

* the first move of a grid-level shortest path from the torso's cell to ``c``'s cell,
  walking over empty cells (the wall and the other colours are obstacles: the expert's
  :func:`~irl_lens.envs.ant_layout.direction_map`, ties to the lowest direction), as the
  angle of that move **in the torso's frame**: ``(cos, sin)`` of the world direction minus
  the torso's yaw, ``(0, 0)`` on ``c``'s own cell or with no path;
* that path's length in moves (divided by the grid's 6-move diameter; 0 on the cell) and
  whether one exists;

then the torso's heading ``(cos yaw, sin yaw)``: :data:`N_ANT_PATH_FEATURES` numbers. All
tensor ops (a 15-round relaxation on the 4 x 4 grid, once per distinct layout), on the
observation's own device.

With ``heading=True`` (``BaseModelConfig.heading_features``) the features also say how the
torso's motion agrees with each colour's path, which a trained base did not work out for
itself (``docs/results-ant.md``): per colour, the cosine between the torso's horizontal
velocity and the path's first move (0 on the cell, with no path or when still) and the
symlogged speed along that move; then the velocity in the torso's frame (forward,
leftward), symlogged: :data:`N_ANT_HEADING_FEATURES` more numbers. The colour whose cosine
is largest is the one the torso is walking toward (:func:`heading_target`).

Two self-supervised targets read off an episode's own later observations (never inputs):
the torso's displacement over the next K steps (:func:`ant_future_displacement`,
``BaseModelConfig.future_horizon``) and the colour it enters next
(:func:`ant_next_colour`, ``BaseModelConfig.next_colour_weight``).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from irl_lens.envs.ant_layout import ANT_EMPTY, ANT_GRID_SIZE, ANT_N_CELLS, ANT_WALL, CELL_SIZE
from irl_lens.envs.pinpad import ANT_N_COLOURS

N_ANT_PATH_FEATURES = 4 * ANT_N_COLOURS + 2
N_ANT_HEADING_FEATURES = 2 * ANT_N_COLOURS + 2
_QUAT = slice(1, 5)  # symlog(qpos[3:7]): the torso's quaternion (w, x, y, z)
_VXY = slice(13, 15)  # symlog(qvel[0:2]): the torso's velocity in the world frame
_STILL = 0.05  # speed (world units per second) below which the torso has no direction
_XY = slice(27, 29)  # xy / (side / 2)
_REL = slice(29, 39)  # (object centre - xy) / side for colours 0..3, then the wall
_UNREACHED = 1_000


def _neighbour_table() -> Tensor:
    """``[16, 4]``: the cell each direction (east, north, west, south) leads to, or -1."""
    table = torch.full((ANT_N_CELLS, 4), -1, dtype=torch.long)
    for cell in range(ANT_N_CELLS):
        col, row = cell % ANT_GRID_SIZE, cell // ANT_GRID_SIZE
        for d, (dc, dr) in enumerate(((1, 0), (0, 1), (-1, 0), (0, -1))):
            c, r = col + dc, row + dr
            if 0 <= c < ANT_GRID_SIZE and 0 <= r < ANT_GRID_SIZE:
                table[cell, d] = r * ANT_GRID_SIZE + c
    return table


_NEIGHBOURS = _neighbour_table()


def _cells(xy: Tensor, cell_size: float) -> Tensor:
    """Cell index of world positions ``[..., 2]`` (clipped to the arena), as ``cell_of``."""
    rc = torch.floor((xy + ANT_GRID_SIZE * cell_size / 2) / cell_size).long()
    rc = rc.clamp(0, ANT_GRID_SIZE - 1)
    return rc[..., 1] * ANT_GRID_SIZE + rc[..., 0]


def _torso_cells(flat: Tensor, cell_size: float) -> Tensor:
    """``long[n]``: the cell the torso stands on in each of ``n`` observations."""
    side = ANT_GRID_SIZE * cell_size
    return _cells(flat[:, _XY] * (side / 2), cell_size)


def ant_layouts(obs: Float[Tensor, "n 41"], cell_size: float = CELL_SIZE) -> Tensor:
    """``[n, 16]`` cell codes recovered from observations (the objects' offsets)."""
    side = ANT_GRID_SIZE * cell_size
    xy = obs[:, _XY] * (side / 2)
    centres = xy[:, None, :] + obs[:, _REL].reshape(-1, ANT_N_COLOURS + 1, 2) * side
    cells = _cells(centres, cell_size)  # [n, 5]
    codes = torch.tensor([*range(1, ANT_N_COLOURS + 1), ANT_WALL], device=obs.device)
    layout = torch.full((obs.shape[0], ANT_N_CELLS), ANT_EMPTY, dtype=torch.long,
                        device=obs.device)  # fmt: skip
    return layout.scatter(1, cells, codes.expand_as(cells))


def ant_paths(layouts: Tensor) -> tuple[Tensor, Tensor]:
    """``(direction, distance)``, each ``[n, colours, 16]``: :func:`direction_map` for every
    colour of every layout at once (-1: none)."""
    nb = _NEIGHBOURS.to(layouts.device)
    inside = nb >= 0  # [16, 4]
    colours = torch.arange(1, ANT_N_COLOURS + 1, device=layouts.device)
    goal = layouts[:, None, :] == colours[None, :, None]  # [n, colours, 16]
    free = (layouts == ANT_EMPTY)[:, None, :]
    dist = torch.where(goal, 0, _UNREACHED)
    for _ in range(ANT_N_CELLS - 1):  # BFS from the goal through free cells
        via = torch.where(inside, dist[..., nb.clamp(min=0)], _UNREACHED).amin(-1) + 1
        dist = torch.where(free, torch.minimum(dist, via), dist)
    reached = dist  # [n, colours, 16]: never above _UNREACHED (each round takes a minimum)
    around = torch.where(inside, reached[..., nb.clamp(min=0)], _UNREACHED)  # [.., 16, 4]
    best, direction = around.min(-1)  # ties: the first (lowest) direction
    has = best < _UNREACHED
    direction = torch.where(has & ~goal, direction, -1)
    # a blocked cell (the wall, a colour just entered) borrows its best neighbour's distance
    distance = torch.where(reached < _UNREACHED, reached, torch.where(has, best + 1, -1))
    return direction, distance


def _unsymlog(y: Tensor) -> Tensor:
    return torch.sign(y) * torch.expm1(y.abs())


def _symlog(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def ant_path_features(
    obs: Float[Tensor, "... 41"], cell_size: float = CELL_SIZE, heading: bool = False
) -> Float[Tensor, "... f"]:
    """The module docstring's :data:`N_ANT_PATH_FEATURES` features of each observation, and
    with ``heading`` the :data:`N_ANT_HEADING_FEATURES` more after them."""
    lead = obs.shape[:-1]
    flat = obs.reshape(-1, obs.shape[-1]).float()
    w, qx, qy, qz = _unsymlog(flat[:, _QUAT]).unbind(-1)
    yaw = torch.atan2(2 * (w * qz + qx * qy), 1 - 2 * (qy * qy + qz * qz))
    here = _torso_cells(flat, cell_size)  # [n]
    # an episode keeps its layout: relax each distinct layout once (a batch of 8,192 steps
    # holds a few dozen), then read every row's cell off its layout's maps
    layouts, row_layout = torch.unique(ant_layouts(flat, cell_size), dim=0, return_inverse=True)
    direction, distance = ant_paths(layouts)
    d = direction[row_layout, :, here]  # [n, colours]
    dist = distance[row_layout, :, here]
    angle = d.float() * (math.pi / 2) - yaw[:, None]
    has_move = d >= 0
    parts = [
        torch.where(has_move, torch.cos(angle), 0.0),
        torch.where(has_move, torch.sin(angle), 0.0),
        dist.clamp(min=0).float() / (2 * (ANT_GRID_SIZE - 1)),
        (dist >= 0).float(),
        torch.stack([torch.cos(yaw), torch.sin(yaw)], -1),
    ]
    width = N_ANT_PATH_FEATURES
    if heading:
        v = _unsymlog(flat[:, _VXY])  # [n, 2], world frame
        speed = v.norm(dim=-1, keepdim=True)
        world = d.float() * (math.pi / 2)
        along = v[:, :1] * torch.cos(world) + v[:, 1:] * torch.sin(world)  # [n, colours]
        moving = has_move & (speed > _STILL)
        cos_y, sin_y = torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]
        own = torch.cat(
            [v[:, :1] * cos_y + v[:, 1:] * sin_y, v[:, 1:] * cos_y - v[:, :1] * sin_y], -1
        )
        parts += [
            torch.where(moving, along / speed.clamp(min=_STILL), 0.0),
            torch.where(has_move, _symlog(along), 0.0),
            _symlog(own),
        ]
        width += N_ANT_HEADING_FEATURES
    return torch.cat(parts, dim=-1).reshape(*lead, width)


def heading_target(obs: Float[Tensor, "... 41"], cell_size: float = CELL_SIZE) -> Tensor:
    """``long[...]``: per observation, the colour whose path the torso's velocity agrees with
    most (the largest heading cosine; ties to the lowest colour). A one-observation rule, the
    reference a probe of an ant base's target colour should beat."""
    feats = ant_path_features(obs, cell_size, heading=True)
    cos = feats[..., N_ANT_PATH_FEATURES : N_ANT_PATH_FEATURES + ANT_N_COLOURS]
    return cos.argmax(-1)


def ant_future_displacement(
    next_obs: Float[Tensor, "batch pos 41"], mask: Float[Tensor, "batch pos"], horizon: int
) -> Float[Tensor, "batch pos 2"]:
    """The torso's displacement, in cells, from ``o_t+1`` to ``o_t+horizon`` (or to the
    episode's last observation when it ends sooner), for every position ``t`` of a batch of
    next-observation targets whose valid positions (``mask``) are a prefix of each row. A
    fixed function of the episode's own observations: the ``future_horizon`` target."""
    xy = next_obs[..., _XY].float() * (ANT_GRID_SIZE / 2)  # cells from the arena's centre
    last = (mask.sum(1).long() - 1).clamp(min=0)  # [batch]
    pos = torch.arange(next_obs.shape[1], device=next_obs.device)
    ahead = torch.minimum(pos[None, :] + horizon - 1, last[:, None])  # [batch, pos]
    later = xy.gather(1, ahead[..., None].expand(-1, -1, 2))
    return later - xy


def ant_colour_underfoot(obs: Float[Tensor, "... 41"], cell_size: float = CELL_SIZE) -> Tensor:
    """``long[...]``: the colour (0..3) of the cell the torso stands on in each observation,
    -1 on an empty cell (the environment's test for entering a colour, read off the
    observation)."""
    lead = obs.shape[:-1]
    flat = obs.reshape(-1, obs.shape[-1]).float()
    here = _torso_cells(flat, cell_size)
    code = ant_layouts(flat, cell_size).gather(1, here[:, None])[:, 0]
    colour = torch.where((code >= 1) & (code <= ANT_N_COLOURS), code - 1, -1)
    return colour.reshape(lead)


def ant_next_colour(
    next_obs: Float[Tensor, "batch pos 41"], mask: Float[Tensor, "batch pos"],
    cell_size: float = CELL_SIZE,
) -> Int[Tensor, "batch pos"]:  # fmt: skip
    """For every position ``t`` of a batch of next-observation targets (valid positions,
    ``mask``, a prefix of each row): the colour the torso enters next, at the first step
    ``s > t`` whose observation stands on a colour other than the step before's; -1 where it
    enters none before the episode ends, and at padding. The episode's first observation
    is taken to stand on no colour (an ant starts on an empty cell). A fixed function of the
    episode's own observations: the ``next_colour_weight`` target. Colours are entered in
    the task's order only by a base that knows its target; a base trained to predict this
    must carry that target in its residual stream (issue 32)."""
    colour = ant_colour_underfoot(next_obs, cell_size)  # the colour under o_t+1
    before = torch.cat([torch.full_like(colour[:, :1], -1), colour[:, :-1]], dim=1)
    valid = mask > 0
    entry = valid & (colour >= 0) & (colour != before)
    n_pos = colour.shape[1]
    pos = torch.arange(n_pos, device=colour.device).expand_as(colour)
    first = torch.where(entry, pos, n_pos)
    upcoming = first.flip(1).cummin(1).values.flip(1)  # the first entry at or after t
    found = colour.gather(1, upcoming.clamp(max=n_pos - 1))
    return torch.where(valid & (upcoming < n_pos), found, -1)
