"""Register the package's environments with Gymnasium under the ``irl_lens/`` namespace.

Entry points are strings (``"module:Class"``), so registering imports nothing heavy:
the env module is imported only when ``gymnasium.make`` is called. ``import irl_lens``
calls :func:`register_envs`, after which::

    env = gymnasium.make("irl_lens/GridPinpad-v0", task="post", render_mode="ansi")

No ``max_episode_steps`` is set: the env truncates itself at T = 100 so that
:class:`~irl_lens.envs.gridworld_batch.BatchedGridPinpad`, which has no wrappers, has
exactly the same episode-end semantics. Bump the ``-vN`` suffix whenever an env's meaning changes.
"""

from __future__ import annotations

import gymnasium

__all__ = ["ANT_PINPAD_ID", "GRID_PINPAD_ID", "register_envs"]

GRID_PINPAD_ID = "irl_lens/GridPinpad-v0"
"""Gymnasium id of :class:`~irl_lens.envs.gridworld.GridPinpadEnv`."""

ANT_PINPAD_ID = "irl_lens/AntPinpad-v0"
"""Gymnasium id of :class:`~irl_lens.envs.ant.AntPinpadEnv` (imports MuJoCo on ``make``)."""

_ENTRY_POINTS = {
    GRID_PINPAD_ID: "irl_lens.envs.gridworld:GridPinpadEnv",
    ANT_PINPAD_ID: "irl_lens.envs.ant:AntPinpadEnv",
}


def register_envs() -> None:
    """Register every ``irl_lens/...`` env id; safe to call any number of times."""
    for env_id, entry_point in _ENTRY_POINTS.items():
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(id=env_id, entry_point=entry_point)
