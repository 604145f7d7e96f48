"""The base action model: a TransformerLens ``HookedTransformer`` fed by our observation encoder.

One timestep is one position (paper, Section 2). The model reads observations
``o_1:t`` and predicts ``p(a_t | o_1:t)`` and ``p(o_t+1 | o_1:t)``; actions are not fed
back as inputs. Observations enter through :class:`GridObservationEncoder` (or
:class:`VectorObservationEncoder` for continuous envs) and are handed to the transformer
with ``start_at_layer=0``. Because ``start_at_layer=0`` skips TransformerLens's own
embedding *and* positional embedding, positions come from rotary attention
(``positional_embedding_type="rotary"``).

The unembed has ``d_vocab_out = n_action_outputs + n_obs_outputs (+ n_future_outputs
+ n_next_colour_outputs)`` columns:

=============  =====================================  ===========================================
env            action head                            next-observation head
=============  =====================================  ===========================================
gridworld      4 logits (categorical over moves)      49 logits: the agent's next cell (the rest
                                                      of the grid never changes in an episode,
                                                      so this is the whole of ``p(o_t+1|o_1:t)``)
continuous     mean and log-std per action dim        mean per observation dim (unit variance)
=============  =====================================  ===========================================

With ``future_horizon = K`` (ant-pinpad) two more columns predict the torso's displacement
over the next ``K`` steps (:func:`~irl_lens.models.ant_features.ant_future_displacement`),
scored with the next observation under the same weight lambda. With ``next_colour_weight``
(ant-pinpad) four more are logits of the colour the torso enters next
(:func:`~irl_lens.models.ant_features.ant_next_colour`), a cross-entropy with that weight
(:meth:`ActionModelEnds.auxiliary_loss`).

Because :class:`ActionModel` *is* a ``HookedTransformer``, ``model.run_with_cache(obs)``
returns the usual :class:`~transformer_lens.ActivationCache` with the usual hook names
(``blocks.{l}.hook_resid_pre``, ``blocks.{l}.attn.hook_pattern`` ...), plus
``hook_obs_embed`` for the encoder output.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.hook_points import HookPoint

from irl_lens import runs
from irl_lens.envs.ant_layout import ANT_OBS_DIM
from irl_lens.envs.expert import UNREACHABLE, distance_maps, shortest_moves
from irl_lens.envs.gridworld_layout import EMPTY, N_CELL_CODES, NEXT_CELL
from irl_lens.envs.pinpad import ANT_N_COLOURS, GRID_SIZE, N_COLOURS, N_WALLS
from irl_lens.models.ant_features import (
    N_ANT_HEADING_FEATURES,
    N_ANT_PATH_FEATURES,
    ant_colour_underfoot,
    ant_future_displacement,
    ant_next_colour,
    ant_path_features,
)
from irl_lens.models.common import DictConfig, build_seeded

logger = logging.getLogger(__name__)

N_CELLS = GRID_SIZE * GRID_SIZE
#: Width of a compact gridworld observation token: 49 cell codes followed by the agent's cell.
GRID_OBS_WIDTH = N_CELLS + 1


@dataclass
class BaseModelConfig(DictConfig):
    """Architecture of the base action model (everything needed to rebuild it)."""

    obs_kind: Literal["grid", "vector"] = "grid"
    """``grid``: compact gridworld tokens ``[.., 50]`` (49 cell codes + agent cell);
    ``vector``: float observations ``[.., obs_dim]``."""
    obs_dim: int = GRID_OBS_WIDTH
    """Width of one observation token (50 for ``grid``)."""
    action_kind: Literal["discrete", "continuous"] = "discrete"
    """Categorical logits (``discrete``) or a diagonal Gaussian (``continuous``)."""
    n_actions: int = 4
    """Number of discrete actions, or the action dimension for continuous actions."""
    d_model: int = 128
    """Residual stream width."""
    n_layers: int = 4
    """Number of transformer blocks ``L``; layers are addressed 0..L."""
    n_heads: int = 4
    """Attention heads per block (``d_head = d_model // n_heads``)."""
    d_mlp: int = 256
    """Hidden width of each block's MLP."""
    n_ctx: int = 100
    """Longest sequence (episode) the model accepts."""
    d_cell: int = 16
    """Width of the per-cell network in the gridworld encoder."""
    obs_loss_weight: float = 0.01
    """lambda in the loss ``-ln p(a_t|o_1:t) - lambda ln p(o_t+1|o_1:t)``."""
    init_scale: float = 0.1
    """Weights start with variance ``init_scale / d_model`` (the paper's variance scale 0.1)."""
    path_features: bool = False
    """Gridworld: add to each colour's slot the shortest-path moves toward it and its path
    distance (a fixed function of the observation, see :func:`path_features`). The quick
    preset turns it on; the paper's encoder is off. Ant-pinpad: the encoder also reads
    :func:`~irl_lens.models.ant_features.ant_path_features` (off in every preset until
    measured on a trained ant base)."""

    heading_features: bool = False
    """Ant-pinpad with ``path_features``: the encoder also reads how the torso's velocity
    agrees with each colour's path (``ant_path_features(..., heading=True)``), a fixed
    function of one observation. Off in every preset until measured (issue 32)."""

    underfoot_features: bool = False
    """Ant-pinpad: add to the residual stream at layer 0 a learned vector for the colour of
    the cell the torso stands on (none or one of the four:
    :func:`~irl_lens.models.ant_features.ant_colour_underfoot`, a fixed function of one
    observation), so "on colour c" is linear in every residual above it. Reaching a colour
    is where a subgoal ends; read off continuous positions it is an AND of thresholds that
    no linear readout of the stream recovered, and the metacontroller's switch did not align
    until it was linear (issue 32, ``docs/experiments-log.md``). On in the quick ant
    preset, off in ``paper`` and ``tiny``."""

    action_mixtures: int = 1
    """Continuous actions: the action head is a mixture of this many diagonal Gaussians
    (1: one Gaussian, the paper's). A mixture can keep apart the two ways an expert may turn
    where the task branches, which one Gaussian averages (issue 32)."""
    future_horizon: int = 0
    """Ant-pinpad: also predict the torso's displacement (in cells) over the next ``K``
    steps, a fixed function of the episode's own observations, scored as a unit-variance
    Gaussian inside the observation term (weight ``obs_loss_weight``). 0: off (the paper).
    A CPU-budget aid: the next action barely depends on the target colour (issue 32), the
    next ``K`` steps' path does."""

    next_colour_weight: float = 0.0
    """Ant-pinpad: also predict the colour the torso enters next (a fixed function of the
    episode's own observations), a cross-entropy with this weight beside the action and
    observation terms. 0: off (the paper). A CPU-budget aid: the next action barely depends
    on the target colour, so a base trained on actions alone does not carry it (issue 32)."""

    arch: Literal["transformer", "hawk"] = "transformer"
    """``transformer`` (:class:`ActionModel`, a TransformerLens ``HookedTransformer``) or
    ``hawk`` (:class:`irl_lens.models.hawk.HawkActionModel`: RG-LRU blocks, the paper's ant
    base; ``n_heads`` is then the gates' blocks)."""
    encoder: Literal["slots", "objects"] = "slots"
    """Gridworld encoder: ``slots`` (:class:`GridObservationEncoder`, one slot per colour)
    or ``objects`` (:class:`PooledObjectEncoder`, objects pooled by ``pool_heads`` learned
    queries, no colour indexing)."""
    pool_heads: int = 4
    """``objects`` encoder: learned-query heads (fewer than the 8 colours)."""

    def __post_init__(self) -> None:
        runs.check_finite_fields(self)
        checks = {
            "pool_heads": self.pool_heads >= 1,
            "d_model": self.d_model >= 8,
            "n_layers": self.n_layers >= 1,
            "n_heads": self.n_heads >= 1 and self.d_model % max(self.n_heads, 1) == 0,
            "d_mlp": self.d_mlp >= 1,
            "n_ctx": self.n_ctx >= 2,
            "d_cell": self.d_cell >= 1,
            "n_actions": self.n_actions >= 1,
            "obs_dim": self.obs_dim >= 1,
            "obs_loss_weight": self.obs_loss_weight >= 0,
            "init_scale": self.init_scale > 0,
            "future_horizon": self.future_horizon >= 0,
            "next_colour_weight": self.next_colour_weight >= 0,
            "action_mixtures": self.action_mixtures >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                value = getattr(self, name)
                hint = " (must divide d_model)" if name == "n_heads" else ""
                raise ValueError(f"BaseModelConfig.{name}={value!r} is out of range{hint}")
        if self.obs_kind not in ("grid", "vector"):
            raise ValueError(f"BaseModelConfig.obs_kind={self.obs_kind!r}: use 'grid' or 'vector'")
        if self.action_kind not in ("discrete", "continuous"):
            raise ValueError(
                f"BaseModelConfig.action_kind={self.action_kind!r}: use 'discrete' or 'continuous'"
            )
        if self.obs_kind == "grid" and self.obs_dim != GRID_OBS_WIDTH:
            raise ValueError(f"BaseModelConfig.obs_dim must be {GRID_OBS_WIDTH} for grid obs")
        if self.arch not in ("transformer", "hawk"):
            raise ValueError(f"BaseModelConfig.arch={self.arch!r}: use 'transformer' or 'hawk'")
        if self.encoder not in ("slots", "objects"):
            raise ValueError(f"BaseModelConfig.encoder={self.encoder!r}: use 'slots' or 'objects'")
        if self.encoder == "objects" and self.obs_kind != "grid":
            raise ValueError("BaseModelConfig.encoder='objects' needs obs_kind='grid'")
        if self.path_features and self.obs_kind != "grid" and self.obs_dim != ANT_OBS_DIM:
            raise ValueError(
                "BaseModelConfig.path_features=True needs gridworld or ant-pinpad observations"
            )
        if self.heading_features and not (self.path_features and self.obs_dim == ANT_OBS_DIM
                                          and self.obs_kind == "vector"):  # fmt: skip
            raise ValueError(
                "BaseModelConfig.heading_features=True needs ant-pinpad observations and "
                "path_features=True"
            )

        if self.underfoot_features and (self.obs_kind != "vector" or self.obs_dim != ANT_OBS_DIM):
            raise ValueError(
                "BaseModelConfig.underfoot_features=True needs ant-pinpad observations "
                f"(obs_kind 'vector', obs_dim {ANT_OBS_DIM})"
            )

        if self.future_horizon and (self.obs_kind != "vector" or self.obs_dim != ANT_OBS_DIM):
            raise ValueError(
                f"BaseModelConfig.future_horizon={self.future_horizon}: only ant-pinpad "
                "observations have a torso to predict (use 0)"
            )

        if self.next_colour_weight and (self.obs_kind != "vector" or self.obs_dim != ANT_OBS_DIM):
            raise ValueError(
                f"BaseModelConfig.next_colour_weight={self.next_colour_weight}: only ant-pinpad "
                "observations have a torso entering colours (use 0)"
            )

        if self.action_mixtures > 1 and self.action_kind != "continuous":
            raise ValueError(
                f"BaseModelConfig.action_mixtures={self.action_mixtures}: a mixture head is "
                "for continuous actions (use 1)"
            )

    @property
    def n_future_outputs(self) -> int:
        return 2 if self.future_horizon else 0

    @property
    def n_next_colour_outputs(self) -> int:
        return ANT_N_COLOURS if self.next_colour_weight else 0

    @property
    def d_vocab_out(self) -> int:
        """Unembed columns: action head, next-observation head, future head, next-colour head."""
        return (self.n_action_outputs + self.n_obs_outputs + self.n_future_outputs
                + self.n_next_colour_outputs)  # fmt: skip

    @property
    def n_action_outputs(self) -> int:
        if self.action_kind == "discrete":
            return self.n_actions
        k = self.action_mixtures
        return 2 * self.n_actions if k == 1 else k * (2 * self.n_actions + 1)

    @property
    def n_obs_outputs(self) -> int:
        return N_CELLS if self.obs_kind == "grid" else self.obs_dim


def _relative_index_table(grid: int) -> Int[Tensor, "agent cell"]:
    """``table[a, c]`` = index of the offset (cell - agent) in a (2G-1)^2 table."""
    rows = torch.arange(grid * grid) // grid
    cols = torch.arange(grid * grid) % grid
    dr = rows[None, :] - rows[:, None] + grid - 1  # [agent, cell]
    dc = cols[None, :] - cols[:, None] + grid - 1
    return dr * (2 * grid - 1) + dc


#: Path distances at or above this share one bucket (a 7x7 board's paths are rarely longer).
MAX_PATH_BUCKET = 15


def _layout_paths(layouts: Int[Tensor, "n cells"]) -> Int[Tensor, "2 n colours cells"]:
    """Per layout, colour and agent cell: the shortest-path move bits and the path length
    (see :func:`path_features`), from the expert's :func:`~irl_lens.envs.expert.distance_maps`
    and :func:`~irl_lens.envs.expert.shortest_moves`."""
    boards = layouts.numpy().astype(np.uint8)
    valid = (boards[:, None, :] == np.arange(1, N_COLOURS + 1)[:, None]).any(-1).all(-1)
    dist = np.full((len(boards), N_COLOURS, N_CELLS), UNREACHABLE, dtype=np.int16)
    if valid.any():
        dist[valid] = distance_maps(boards[valid])
    good, best = shortest_moves(dist[:, :, NEXT_CELL])  # [n, colours, agent cell, (4)]
    reachable = best < UNREACHABLE
    moves = np.where(reachable, (good * np.array([1, 2, 4, 8])).sum(-1), 0)
    steps = np.where(reachable, np.minimum(best + 1, MAX_PATH_BUCKET), MAX_PATH_BUCKET + 1)
    return torch.from_numpy(np.stack([moves, steps]).astype(np.int64))


def _layout_paths_on_device(layouts: Int[Tensor, "n cells"]) -> Int[Tensor, "2 n colours cells"]:
    """:func:`_layout_paths` as tensor ops on the layouts' own device (no host round trip):
    the distance maps by ``N_CELLS - 1`` rounds of relaxation over the move table (an empty
    cell's distance is one more than its nearest neighbour's; walls and the other colours
    never get one), then the same moves and buckets. Equal to the BFS (tested); for a GPU,
    where it replaces a copy to the host at every forward pass."""
    dev = layouts.device
    colours = torch.arange(1, N_COLOURS + 1, device=dev)
    target = layouts[:, None, :] == colours[None, :, None]  # [n, colours, cells]
    # a layout without every colour (never in real data): unreachable everywhere, as the BFS
    target &= target.any(-1).all(-1)[:, None, None]
    free = (layouts == EMPTY)[:, None, :]  # [n, 1, cells]
    # int16 (distances stay below UNREACHABLE + 1): the [n, colours, cells, 4] gathers of a
    # large batch take a quarter of the memory of int64
    unreachable = torch.full((), UNREACHABLE, dtype=torch.int16, device=dev)
    dist = torch.where(target, torch.zeros((), dtype=torch.int16, device=dev), unreachable)
    nxt = torch.from_numpy(NEXT_CELL.copy()).to(dev)  # [cells, 4]
    for _ in range(N_CELLS - 1):  # a path visits each cell at most once
        via = dist[..., nxt].amin(-1) + 1  # [n, colours, cells]: best neighbour + 1
        dist = torch.where(free, torch.minimum(dist, via.clamp(max=UNREACHABLE)), dist)
    dest = dist[..., nxt]  # [n, colours, agent cell, 4]: each move's destination distance
    best = dest.amin(-1)  # [n, colours, agent cell]: the best move's destination
    good = dest == best[..., None]
    reachable = best < UNREACHABLE
    bits = torch.tensor([1, 2, 4, 8], device=dev)
    moves = torch.where(reachable, (good * bits).sum(-1), 0)
    steps = torch.where(
        reachable, (best.long() + 1).clamp(max=MAX_PATH_BUCKET), MAX_PATH_BUCKET + 1
    )
    return torch.stack([moves, steps]).long()


class PathMemo:
    """The last batch of layouts and their path tables: a step-by-step rollout asks for
    the same boards at every step, so one equality check replaces the BFS."""

    def __init__(self) -> None:
        self.layouts: Tensor | None = None
        self.paths: Tensor | None = None

    def paths_of(self, layouts: Int[Tensor, "n cells"]) -> Int[Tensor, "2 n colours cells"]:
        if self.layouts is None or not torch.equal(self.layouts, layouts):
            self.layouts, self.paths = layouts.clone(), _layout_paths(layouts)
        assert self.paths is not None
        return self.paths


def path_features(
    codes: Int[Tensor, "... cells"], agent: Int[Tensor, "..."], memo: PathMemo | None = None
) -> tuple[Int[Tensor, "... colours"], Int[Tensor, "... colours"]]:
    """Shortest-path moves and distances from the agent toward every colour.

    A fixed (not learned) function of one observation, exactly the expert's
    dynamic-programming quantities (:func:`irl_lens.envs.expert.distance_maps`: walls and
    the other colours are obstacles):

    * ``moves[..., c]`` in 0..15: bit ``a`` is set when move ``a`` is a shortest-path
      move toward colour ``c`` (0 when ``c`` cannot be reached);
    * ``dist[..., c]``: the path length toward ``c``, capped at :data:`MAX_PATH_BUCKET`,
      or ``MAX_PATH_BUCKET + 1`` when unreachable.

    Rows whose layout lacks a colour (never in real data) get "unreachable" everywhere.
    On the CPU, runs of equal layouts are deduplicated first, so a batch of whole episodes
    costs one BFS per episode, and ``memo`` skips even that when the boards are those of
    the last call. On any other device the maps are relaxed there
    (:func:`_layout_paths_on_device`, the same numbers), so the forward pass never waits on
    the host.
    """
    lead = codes.shape[:-1]
    if codes.device.type != "cpu":
        # on an accelerator: no copy to the host, no memo (its equality test would sync);
        # every row's own layout, relaxed on the device
        paths = _layout_paths_on_device(codes.reshape(-1, codes.shape[-1]))
        rows = torch.arange(paths.shape[1], device=codes.device)
        per_token = paths.permute(1, 3, 0, 2)[rows, agent.reshape(-1)]  # [n, 2, colours]
        per_token = per_token.reshape(*lead, 2, N_COLOURS)
        return per_token[..., 0, :], per_token[..., 1, :]
    flat = codes.reshape(-1, codes.shape[-1]).cpu()
    # an episode's tokens share one layout and sit next to each other: O(n), no sort
    layouts, inverse = torch.unique_consecutive(flat, dim=0, return_inverse=True)
    paths = memo.paths_of(layouts) if memo is not None else _layout_paths(layouts)
    by_cell = paths.permute(1, 3, 0, 2)  # [layouts, agent cell, 2, colours]
    per_token = by_cell[inverse, agent.reshape(-1).cpu()]  # [n, 2, colours]
    per_token = per_token.reshape(*lead, 2, N_COLOURS).to(codes.device)
    return per_token[..., 0, :], per_token[..., 1, :]


class GridObservationEncoder(nn.Module):
    """Embeds a compact gridworld observation into the residual stream.

    The observation carries exactly the paper's information (what occupies every cell,
    and where the agent is), and the encoder keeps the paper's linear embedding of the
    one-hot grid. But a linear map cannot express the conjunctions the policy needs,
    such as "the agent stands on colour c" or "colour c lies up and to the left"
    (measured: with only the linear embedding, a small transformer never starts to use
    history on a CPU budget; with conjunctions summed into one shared vector it learns
    them, but slowly, because reading "the direction of colour X" for a target X known
    only at run time must undo that superposition). So the encoder adds:

    * one *slot* per colour c: a shared network over the offset of colour c's cell from
      the agent, ``relu(E_code[c] + E_rel[offset] + E_row[d_row] + E_col[d_col])``,
      written to its own ``d_cell``-wide slot (colours are unique on a board, so the slot
      is the object's identity, not added information);
    * one slot for the walls: the same network summed over the wall cells;
    * what the agent stands on, ``E_under[code at the agent's cell]``, and where it is;
    * with ``with_paths`` (``BaseModelConfig.path_features``, the quick preset), inside
      colour c's slot network also ``E_moves[shortest-path moves toward c] +
      E_path[path length to c]`` (:func:`path_features`). Walking around walls and the
      other colours is then read off the observation instead of learned, so a CPU budget
      goes to what the paper studies: *which* colour comes next, from the history.

        e_0 = sum_cells E_grid[i, code_i] + E_under[under] + E_agent[agent]
              + W_out . concat(slot_0, ..., slot_7, slot_walls) + b
    """

    def __init__(
        self, d_cell: int, d_model: int, grid: int = GRID_SIZE, with_paths: bool = False
    ) -> None:
        super().__init__()
        self.grid = grid
        self.with_paths = with_paths
        if with_paths:
            if grid != GRID_SIZE:
                raise ValueError(f"path features need the {GRID_SIZE}x{GRID_SIZE} board")
            self.move_embed = nn.Embedding(16, d_cell)
            self.path_embed = nn.Embedding(MAX_PATH_BUCKET + 2, d_cell)
            self.path_memo = PathMemo()
        self.n_cells = grid * grid
        self.max_occupied = N_COLOURS + N_WALLS
        self.grid_embed = nn.Embedding(self.n_cells * N_CELL_CODES, d_model)
        self.under_embed = nn.Embedding(N_CELL_CODES, d_model)
        self.agent_embed = nn.Embedding(self.n_cells, d_model)
        self.code_embed = nn.Embedding(N_CELL_CODES, d_cell)
        self.rel_embed = nn.Embedding((2 * grid - 1) ** 2, d_cell)
        self.row_embed = nn.Embedding(2 * grid - 1, d_cell)
        self.col_embed = nn.Embedding(2 * grid - 1, d_cell)
        self.out = nn.Linear((N_COLOURS + 1) * d_cell, d_model)
        self.register_buffer("rel_index", _relative_index_table(grid), persistent=False)
        self.register_buffer(
            "cell_base", torch.arange(self.n_cells) * N_CELL_CODES, persistent=False
        )
        slot_tables = [self.code_embed, self.rel_embed, self.row_embed, self.col_embed]
        if with_paths:
            slot_tables += [self.move_embed, self.path_embed]
        for emb in slot_tables:
            nn.init.normal_(emb.weight, std=0.5)
        for emb in (self.grid_embed, self.under_embed, self.agent_embed):
            nn.init.normal_(emb.weight, std=0.02)

    def _object_features(self, codes: Tensor, rel: Tensor) -> Tensor:
        """The pre-activation of each object's slot network (the ReLU comes after paths)."""
        span = 2 * self.grid - 1
        return (
            self.code_embed(codes)
            + self.rel_embed(rel)
            + self.row_embed(rel // span)
            + self.col_embed(rel % span)
        )

    def _path_features(self, codes: Tensor, agent: Tensor, obj_codes: Tensor) -> Tensor:
        """Each colour object's shortest-path moves and distance (walls get zeros)."""
        moves, steps = path_features(codes, agent, self.path_memo)  # [batch, pos, colours]
        colour = (obj_codes - 1).clamp(0, N_COLOURS - 1)  # [batch, pos, k]
        is_colour = ((obj_codes >= 1) & (obj_codes <= N_COLOURS)).unsqueeze(-1)
        extra = self.move_embed(torch.gather(moves, -1, colour)) + self.path_embed(
            torch.gather(steps, -1, colour)
        )
        return extra * is_colour

    def _pool(self, feats: Tensor, obj_codes: Tensor, keep: Tensor) -> Tensor:
        """The objects' features ``[batch, pos, k, d_cell]`` -> ``[batch, pos, d_model]``:
        each colour into its own slot, the walls summed into the last one."""
        slot = (obj_codes - 1).clamp(0, N_COLOURS)  # [batch, pos, k]
        slots = feats.new_zeros(*feats.shape[:-2], N_COLOURS + 1, feats.shape[-1])
        slots.scatter_add_(-2, slot.unsqueeze(-1).expand_as(feats), feats)
        return self.out(slots.flatten(-2))

    def forward(self, obs: Int[Tensor, "batch pos obs"]) -> Float[Tensor, "batch pos d_model"]:
        codes = obs[..., : self.n_cells]  # [batch, pos, cells]
        agent = obs[..., self.n_cells]  # [batch, pos]
        occupied = codes != 0  # [batch, pos, cells]
        # the occupied cells first (stable: raster order); a valid layout has exactly
        # N_COLOURS + N_WALLS of them
        cells = torch.argsort((~occupied).to(torch.uint8), dim=-1, stable=True)
        cells = cells[..., : self.max_occupied]  # [batch, pos, k]
        keep = torch.gather(occupied, -1, cells).unsqueeze(-1)  # [batch, pos, k, 1]
        obj_codes = torch.gather(codes, -1, cells)  # [batch, pos, k]
        rel = torch.gather(self.rel_index[agent], -1, cells)  # [batch, pos, k]
        feats = self._object_features(obj_codes, rel)  # [batch, pos, k, d_cell]
        if self.with_paths:
            feats = feats + self._path_features(codes, agent, obj_codes)
        feats = torch.relu(feats) * keep
        # the paper's linear embedding of the one-hot grid; empty cells only add a
        # constant, absorbed by the bias, so summing the occupied cells is the same map
        linear = (self.grid_embed(self.cell_base[cells] + obj_codes) * keep).sum(-2)
        under = torch.gather(codes, -1, agent.unsqueeze(-1)).squeeze(-1)  # [batch, pos]
        return (
            self._pool(feats, obj_codes, keep)
            + linear
            + self.under_embed(under)
            + self.agent_embed(agent)
        )


class PooledObjectEncoder(GridObservationEncoder):
    """:class:`GridObservationEncoder` without the colour-indexed slots (issue 29, Fig 4).

    Every object (colour or wall) keeps its token, built by the same network from its code,
    its offset from the agent and, with ``with_paths``, its own shortest-path moves and
    distance. Instead of a slot per colour, ``heads`` learned queries attend over the
    objects and their value vectors are concatenated:

        a_h = softmax_k(q_h . W_k f_k / sqrt(d_cell)),  pooled_h = sum_k a_h,k W_v^h f_k,
        e_0 = W_out . concat(pooled_1, ..., pooled_H) + (the linear, under and agent terms)

    With fewer heads than colours, no fixed linear map of ``e_0`` can pick "the moves toward
    colour c" for every c: the information is there (in superposition over the objects) but
    not indexed by colour. Selecting the goal's moves then needs the goal, which the model
    infers from the history, so the hypothesis is that controllability moves past layer 0.
    """

    def __init__(
        self,
        d_cell: int,
        d_model: int,
        grid: int = GRID_SIZE,
        with_paths: bool = False,
        heads: int = 4,
    ) -> None:
        super().__init__(d_cell, d_model, grid=grid, with_paths=with_paths)
        self.heads = heads
        self.queries = nn.Parameter(torch.randn(heads, d_cell) * d_cell**-0.5)
        self.keys = nn.Linear(d_cell, d_cell, bias=False)
        self.values = nn.Linear(d_cell, heads * d_cell, bias=False)
        self.out = nn.Linear(heads * d_cell, d_model)

    def _pool(self, feats: Tensor, obj_codes: Tensor, keep: Tensor) -> Tensor:
        d_cell = feats.shape[-1]
        scores = self.keys(feats) @ self.queries.T / d_cell**0.5  # [batch, pos, k, heads]
        scores = scores.masked_fill(~keep, float("-inf"))
        attn = torch.softmax(scores, dim=-2)  # over the objects
        values = self.values(feats).unflatten(-1, (self.heads, d_cell))  # [.., k, heads, d]
        pooled = torch.einsum("...kh,...khd->...hd", attn, values)
        return self.out(pooled.flatten(-2))


class VectorObservationEncoder(nn.Module):
    """Embeds a float observation vector with a small MLP (continuous envs such as ant).

    With ``with_paths`` (ant-pinpad's 41-number observation only) the MLP also reads
    :func:`~irl_lens.models.ant_features.ant_path_features`: per colour, the first move of
    a grid-level shortest path in the torso's frame and its length, and the heading, a
    fixed function of the observation (issue 32's CPU-budget aid, like the gridworld's);
    with ``with_heading`` also the velocity's agreement with each colour's path. With
    ``with_underfoot`` a learned vector per colour under the torso (or none) is added to the
    MLP's output (``BaseModelConfig.underfoot_features``).
    """

    def __init__(
        self,
        obs_dim: int,
        d_model: int,
        with_paths: bool = False,
        with_heading: bool = False,
        with_underfoot: bool = False,
    ) -> None:
        super().__init__()
        if with_paths and obs_dim != ANT_OBS_DIM:
            raise ValueError(f"ant path features need the {ANT_OBS_DIM}-number ant observation")
        if with_heading and not with_paths:
            raise ValueError("ant heading features come with the path features (with_paths)")
        self.with_paths, self.with_heading = with_paths, with_heading
        width = obs_dim + (N_ANT_PATH_FEATURES if with_paths else 0)
        width += N_ANT_HEADING_FEATURES if with_heading else 0
        self.net = nn.Sequential(nn.Linear(width, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        if with_underfoot and obs_dim != ANT_OBS_DIM:
            raise ValueError(f"underfoot features need the {ANT_OBS_DIM}-number ant observation")
        self.underfoot = nn.Embedding(ANT_N_COLOURS + 1, d_model) if with_underfoot else None
        if self.underfoot is not None:
            nn.init.normal_(self.underfoot.weight, std=0.5)

    def forward(self, obs: Float[Tensor, "batch pos obs"]) -> Float[Tensor, "batch pos d_model"]:
        raw = obs
        if self.with_paths:
            feats = ant_path_features(obs, heading=self.with_heading)
            obs = torch.cat([obs, feats.to(obs.dtype)], dim=-1)
        out = self.net(obs)
        if self.underfoot is not None:  # row 0: no colour underfoot
            out = out + self.underfoot(ant_colour_underfoot(raw) + 1).to(out.dtype)
        return out


@dataclass
class ActionModelOutput:
    """The unembed's columns, split by meaning."""

    action_params: Float[Tensor, "batch pos n_action_outputs"]
    """Logits (discrete) or ``[mean, log_std]`` concatenated (continuous; with
    ``action_mixtures`` K > 1: the K weights' logits, then each component's
    ``[mean, log_std]``)."""
    next_obs: Float[Tensor, "batch pos n_obs_outputs"]
    """Next-cell logits (grid) or next-observation mean (vector)."""
    future: Float[Tensor, "batch pos n_future_outputs"] | None = None
    """With ``future_horizon``: the predicted displacement over the next K steps."""
    next_colour: Float[Tensor, "batch pos n_next_colour_outputs"] | None = None
    """With ``next_colour_weight``: logits of the colour the torso enters next."""


def _action_std(log_std: Tensor) -> Tensor:
    """A continuous action head's standard deviation: its log clamped to [-5, 2]."""
    return log_std.clamp(-5.0, 2.0).exp()


class ActionModelEnds:
    """The two ends every base model shares, whatever its blocks: the observation encoder's
    entry into the residual stream (``self.obs_encoder`` then ``self.hook_obs_embed``), and
    what it does with its unembed's outputs (split them by meaning, read the policy, score
    the loss; ``self.model_cfg`` is its :class:`BaseModelConfig`). Shared by
    :class:`ActionModel` and :class:`irl_lens.models.hawk.HawkActionModel`."""

    model_cfg: BaseModelConfig
    obs_encoder: nn.Module
    hook_obs_embed: HookPoint

    def embed_obs(self, obs: Tensor) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream at layer 0 (before block 0) for a batch of observations."""
        return self.hook_obs_embed(self.obs_encoder(obs))

    def split(self, out: Float[Tensor, "batch pos d_vocab_out"]) -> ActionModelOutput:
        cfg = self.model_cfg
        n_a, n_o, n_f = cfg.n_action_outputs, cfg.n_obs_outputs, cfg.n_future_outputs
        n_c = cfg.n_next_colour_outputs
        return ActionModelOutput(
            action_params=out[..., :n_a],
            next_obs=out[..., n_a : n_a + n_o],
            future=out[..., n_a + n_o : n_a + n_o + n_f] if n_f else None,
            next_colour=out[..., n_a + n_o + n_f : n_a + n_o + n_f + n_c] if n_c else None,
        )

    def action_distribution(
        self, action_params: Float[Tensor, "batch pos n_action_outputs"]
    ) -> torch.distributions.Distribution:
        """The policy ``p(a_t | o_1:t)`` as a torch distribution."""
        if self.model_cfg.action_kind == "discrete":
            return torch.distributions.Categorical(logits=action_params)
        k = self.model_cfg.action_mixtures
        if k == 1:
            mean, log_std = action_params.chunk(2, dim=-1)
            std = _action_std(log_std)
            return torch.distributions.Independent(torch.distributions.Normal(mean, std), 1)
        logits, mean, log_std = self._mixture_parts(action_params)
        gaussians = torch.distributions.Normal(mean, _action_std(log_std))
        return torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(logits=logits),
            torch.distributions.Independent(gaussians, 1),
        )

    def _mixture_parts(self, action_params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(logits [..., k], mean [..., k, n], log_std [..., k, n])`` of a mixture head:
        the k weights' logits first, then each component's ``[mean, log_std]``."""
        k = self.model_cfg.action_mixtures
        comps = action_params[..., k:].unflatten(-1, (k, -1))
        mean, log_std = comps.chunk(2, dim=-1)
        return action_params[..., :k], mean, log_std

    def action_mean(self, action_params: Tensor) -> Tensor:
        """The policy's expected action (continuous; the mixture's weighted mean)."""
        if self.model_cfg.action_mixtures == 1:
            return action_params.chunk(2, dim=-1)[0]
        logits, mean, _ = self._mixture_parts(action_params)
        return (logits.softmax(-1)[..., None] * mean).sum(-2)

    def act_continuous(
        self, action_params: Float[Tensor, "rows n_action_outputs"], greedy: bool, generator
    ) -> Tensor:
        """A continuous action per row: greedy, the most probable component's mean (one
        Gaussian: its mean); else a sample, the component drawn by its weight. Noise comes
        from ``generator`` (a CPU generator: the same numbers on any device)."""
        rows, n = action_params.shape[0], self.model_cfg.n_actions
        if self.model_cfg.action_mixtures == 1:
            mean, log_std = action_params.chunk(2, dim=-1)
            if greedy:
                return mean
            noise = torch.randn(rows, n, generator=generator).to(action_params.device)
            return mean + _action_std(log_std) * noise
        logits, mean, log_std = self._mixture_parts(action_params)
        if greedy:
            pick = logits.argmax(-1)
        else:
            u = torch.rand(rows, 1, generator=generator).to(action_params.device)
            pick = (logits.softmax(-1).cumsum(-1) < u).sum(-1).clamp(max=logits.shape[-1] - 1)
        index = pick[:, None, None].expand(-1, 1, n)
        mean = mean.gather(1, index)[:, 0]
        if greedy:
            return mean
        std = _action_std(log_std.gather(1, index)[:, 0])
        noise = torch.randn(rows, n, generator=generator).to(action_params.device)
        return mean + std * noise

    def losses(
        self,
        out: Float[Tensor, "batch pos d_vocab_out"],
        actions: Tensor,
        next_obs_target: Tensor,
        mask: Float[Tensor, "batch pos"],
    ) -> tuple[Tensor, Tensor]:
        """Masked mean action NLL and next-observation NLL (paper Section 2 loss, per token).

        ``next_obs_target`` is the agent's next cell (grid, long) or the next observation
        (vector, float). Positions with ``mask == 0`` (padding, or no next observation)
        do not count. With ``future_horizon`` the observation term also scores the
        displacement over the next K steps (read off ``next_obs_target``).
        """
        parts = self.split(out)
        denom = mask.sum().clamp(min=1.0)
        if self.model_cfg.action_kind == "discrete":
            nll_a = F.cross_entropy(
                parts.action_params.flatten(0, 1), actions.flatten(), reduction="none"
            ).view_as(mask)
        else:
            nll_a = -self.action_distribution(parts.action_params).log_prob(actions)
        if self.model_cfg.obs_kind == "grid":
            nll_o = F.cross_entropy(
                parts.next_obs.flatten(0, 1), next_obs_target.flatten(), reduction="none"
            ).view_as(mask)
        else:
            nll_o = 0.5 * ((parts.next_obs - next_obs_target) ** 2).sum(-1)
        if parts.future is not None:
            ahead = ant_future_displacement(
                next_obs_target, mask, self.model_cfg.future_horizon
            ).to(parts.future.dtype)
            nll_o = nll_o + 0.5 * ((parts.future - ahead) ** 2).sum(-1)
        return (nll_a * mask).sum() / denom, (nll_o * mask).sum() / denom

    def auxiliary_loss(
        self,
        out: Float[Tensor, "batch pos d_vocab_out"],
        next_obs_target: Tensor,
        mask: Float[Tensor, "batch pos"],
    ) -> tuple[Tensor, Tensor]:
        """``(weighted term, cross-entropy)`` of the next-colour head: the mean over the
        positions after which the torso enters a colour
        (:func:`~irl_lens.models.ant_features.ant_next_colour`), times
        ``next_colour_weight``; both 0 without the head. Added to the pretraining loss."""
        parts = self.split(out)
        if parts.next_colour is None:
            zero = out.new_zeros(())
            return zero, zero
        target = ant_next_colour(next_obs_target, mask)
        known = target >= 0
        ce = F.cross_entropy(
            parts.next_colour.flatten(0, 1).float(), target.clamp(min=0).flatten(),
            reduction="none",
        ).view_as(mask)  # fmt: skip
        ce = (ce * known).sum() / known.sum().clamp(min=1)
        return self.model_cfg.next_colour_weight * ce, ce


def make_obs_encoder(cfg: BaseModelConfig) -> nn.Module:
    """The observation encoder ``cfg`` asks for (the same for every architecture)."""
    if cfg.obs_kind == "grid" and cfg.encoder == "objects":
        return PooledObjectEncoder(
            cfg.d_cell, cfg.d_model, with_paths=cfg.path_features, heads=cfg.pool_heads
        )
    if cfg.obs_kind == "grid":
        return GridObservationEncoder(cfg.d_cell, cfg.d_model, with_paths=cfg.path_features)
    return VectorObservationEncoder(
        cfg.obs_dim,
        cfg.d_model,
        with_paths=cfg.path_features,
        with_heading=cfg.heading_features,
        with_underfoot=cfg.underfoot_features,
    )


class ActionModel(ActionModelEnds, HookedTransformer):
    """The base sequence model: our observation encoder + a rotary, pre-LN ``HookedTransformer``.

    ``forward(obs)`` returns the raw unembed ``[batch, pos, n_action_outputs + n_obs_outputs]``;
    :meth:`split` cuts it into an :class:`ActionModelOutput`. Pass ``start_at_layer`` /
    ``stop_at_layer`` / ``past_kv_cache`` to run part of the stack (the rollout engine does);
    with ``start_at_layer`` set, ``obs`` is the residual stream before that block.
    """

    def __init__(self, cfg: BaseModelConfig) -> None:
        tl_cfg = HookedTransformerConfig(
            n_layers=cfg.n_layers,
            d_model=cfg.d_model,
            n_ctx=cfg.n_ctx,
            d_head=cfg.d_model // cfg.n_heads,
            n_heads=cfg.n_heads,
            d_mlp=cfg.d_mlp,
            act_fn="relu",
            normalization_type="LN",
            positional_embedding_type="rotary",
            d_vocab=1,  # unused: observations enter at start_at_layer=0
            d_vocab_out=cfg.d_vocab_out,
            # weight std: variance init_scale / d_model (the paper's "init variance scale")
            initializer_range=(cfg.init_scale / cfg.d_model) ** 0.5,
            default_prepend_bos=False,
            # NB: never pass seed= here: it reseeds torch, numpy and random globally.
        )
        with warnings.catch_warnings():
            # 3.x announces HookedTransformer's removal in 4.0; we pin <4 on purpose.
            warnings.filterwarnings("ignore", message="HookedTransformer is deprecated")
            super().__init__(tl_cfg)
        self.model_cfg = cfg
        self.obs_encoder = make_obs_encoder(cfg)
        self.hook_obs_embed = HookPoint()  # [batch, pos, d_model]
        self.setup()

    def forward(  # type: ignore[override]
        self,
        obs: Tensor,
        *,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        past_kv_cache=None,
        return_type: str | None = "logits",
    ) -> Tensor | None:
        """Run the model on observations (or, with ``start_at_layer``, on a residual stream).

        Returns the unembed output ``[batch, pos, d_vocab_out]``, or the residual stream
        before block ``stop_at_layer`` when that is given.
        """
        if start_at_layer is None:
            resid = self.embed_obs(obs)
            start_at_layer = 0
        else:
            resid = obs
        return HookedTransformer.forward(
            self,
            resid,
            start_at_layer=start_at_layer,
            stop_at_layer=stop_at_layer,
            past_kv_cache=past_kv_cache,
            return_type=return_type,
        )


def _new_model(cfg: BaseModelConfig) -> ActionModel:
    """An untrained base model of ``cfg.arch``."""
    if cfg.arch == "hawk":
        # lazy: hawk builds on this module's heads and encoders
        from irl_lens.models.hawk import HawkActionModel

        return HawkActionModel(cfg)  # type: ignore[return-value]
    return ActionModel(cfg)


def build_model(cfg: BaseModelConfig, seed: int = 0) -> ActionModel:
    """Build a base model (:class:`ActionModel`, or the Hawk model for ``arch="hawk"``)
    with a reproducible initialisation."""
    return build_seeded(lambda: _new_model(cfg), seed)


def load_base_model(run: str | Path, checkpoint: str | Path | None = None) -> ActionModel:
    """Rebuild a pretrained base model from its run folder (final weights or a checkpoint).

    Example::

        model = load_base_model("runs/demo/base")  # a HookedTransformer
        logits, cache = model.run_with_cache(obs, names_filter=lambda n: "resid" in n)
    """

    run = Path(run)
    config = runs.read_json(run / "config.json", "run config")
    if config.get("kind") != "base_model":
        raise runs.RunError(f"{run} is a {config.get('kind')!r} run, not a base_model run")
    try:
        cfg = BaseModelConfig.from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise runs.RunError(f"{run}/config.json: bad model config ({e})") from None
    model = _new_model(cfg)
    weights = Path(checkpoint) / "model.safetensors" if checkpoint else run / "model.safetensors"
    if not weights.is_file() and checkpoint is None:
        raise runs.RunError(
            f"{run} has no model.safetensors (training did not finish; "
            "continue it with `irl-lens pretrain DATA --out RUN --resume`)"
        )
    runs.load_weights(model, weights)
    model.eval()
    return model
