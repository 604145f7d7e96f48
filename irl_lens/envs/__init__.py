"""Environments of the paper: gridworld-pinpad (this package) and its shared task logic.

``irl_lens.envs`` re-exports the public names of :mod:`~irl_lens.envs.pinpad` (tasks and
constants), :mod:`~irl_lens.envs.gridworld_layout` (layouts and observations),
:mod:`~irl_lens.envs.gridworld` (the Gymnasium env), :mod:`~irl_lens.envs.gridworld_batch`
(the batched NumPy env) and :mod:`~irl_lens.envs.expert` (the shortest-path expert).
It must never import MuJoCo: the ant env (:mod:`~irl_lens.envs.ant`, with
``ant_layout``, ``ant_arena``, ``ant_batch`` and ``ant_figure``) is reached only through
its lazy string entry point or an explicit import.
"""

from irl_lens.envs.expert import UNREACHABLE, GridExpert, distance_maps, expert_action
from irl_lens.envs.gridworld import GridPinpadEnv
from irl_lens.envs.gridworld_batch import BatchedGridPinpad
from irl_lens.envs.gridworld_layout import (
    ACTION_NAMES,
    AGENT_CHANNEL,
    DOWN,
    EMPTY,
    LEFT,
    N_ACTIONS,
    N_CELL_CODES,
    N_CELLS,
    NEXT_CELL,
    OBS_CHANNELS,
    RIGHT,
    UP,
    WALL,
    colour_code,
    decode_observation,
    encode_observation,
    encode_observations,
    is_solvable,
    sample_layout,
    sample_task,
    validate_layout,
)
from irl_lens.envs.pinpad import (
    GRID_SIZE,
    MAX_STEPS,
    N_COLOURS,
    N_SUBGOALS,
    N_WALLS,
    POST_TASK,
    PRETRAIN_TASKS,
    SEEN_TASK,
    Task,
    TaskSpec,
    format_task,
    parse_task,
    subgoal_of_colour,
)
from irl_lens.envs.registration import GRID_PINPAD_ID, register_envs

__all__ = [
    "ACTION_NAMES",
    "AGENT_CHANNEL",
    "DOWN",
    "EMPTY",
    "GRID_PINPAD_ID",
    "GRID_SIZE",
    "LEFT",
    "MAX_STEPS",
    "N_ACTIONS",
    "N_CELLS",
    "N_CELL_CODES",
    "N_COLOURS",
    "N_SUBGOALS",
    "N_WALLS",
    "NEXT_CELL",
    "OBS_CHANNELS",
    "POST_TASK",
    "PRETRAIN_TASKS",
    "SEEN_TASK",
    "RIGHT",
    "UNREACHABLE",
    "UP",
    "WALL",
    "BatchedGridPinpad",
    "GridExpert",
    "GridPinpadEnv",
    "Task",
    "TaskSpec",
    "colour_code",
    "decode_observation",
    "distance_maps",
    "encode_observation",
    "encode_observations",
    "expert_action",
    "format_task",
    "is_solvable",
    "parse_task",
    "register_envs",
    "sample_layout",
    "sample_task",
    "subgoal_of_colour",
    "validate_layout",
]
