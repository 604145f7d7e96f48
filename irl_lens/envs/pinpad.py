"""Task logic shared by the pinpad environments: constants, tasks and subgoal labels.

A *pinpad* task is a sequence of colours the agent must step onto, in order
(Kobayashi et al. 2025, Appendix A). In gridworld-pinpad there are eight colours,
``0..7``, and the *abstract subgoals* are the colour pairs ``0-1``, ``2-3``, ``4-5`` and
``6-7``: a pretraining task such as ``0-1-4-5-0-1`` is three subgoals long. The subgoal
label of a colour ``c`` is therefore ``c // 2``; probes and supervised controllers are
trained to predict / pursue these labels.

Tasks are written as colours joined by ``-`` (``"0-1-4-5-0-1"``) on the command line and
in configs, and held as ``tuple[int, ...]`` in code. :func:`parse_task` converts (and
validates), :func:`format_task` goes back.

Example::

    >>> parse_task("0-1-4-5")
    (0, 1, 4, 5)
    >>> format_task(POST_TASK)
    '0-1-2-3-4-5-6-7-0-1-2-3'
    >>> subgoal_of_colour(5)
    2
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from gymnasium.utils import seeding

__all__ = [
    "ANT_N_COLOURS",
    "GRID_SIZE",
    "MAX_TASK_LEN",
    "MAX_STEPS",
    "N_COLOURS",
    "N_SUBGOALS",
    "N_WALLS",
    "POST_TASK",
    "PRETRAIN_TASKS",
    "Task",
    "TaskSpec",
    "env_rngs",
    "format_task",
    "parse_task",
    "subgoal_of_colour",
]

GRID_SIZE = 7
"""Side length G of the square grid (G x G cells)."""

N_COLOURS = 8
"""Number O of coloured cells, one per colour ``0..O-1``."""

N_WALLS = 4
"""Number W of wall cells."""

MAX_STEPS = 100
"""Time limit T: an episode not terminated after T steps is truncated."""

N_SUBGOALS = N_COLOURS // 2
"""Number of abstract subgoals: the colour pairs 0-1, 2-3, 4-5, 6-7."""

ANT_N_COLOURS = 4
"""Colours 0..3 of ant-pinpad, where every colour is its own subgoal (the MuJoCo env in
:mod:`irl_lens.envs.ant`; kept here so that reading ant data does not import MuJoCo)."""

MAX_TASK_LEN = 16
"""Longest task accepted (the post-training task has 12 colours): an episode has at most
:data:`MAX_STEPS` steps, so far longer tasks cannot be completed and only waste memory."""

Task = tuple[int, ...]
"""A task: the colours to step onto, in order."""

TaskSpec = str | Sequence[int]
"""Anything :func:`parse_task` accepts: ``"0-1-2-3"``, ``"post"`` or a sequence of ints."""


def _t(spec: str) -> Task:
    return tuple(int(c) for c in spec.split("-"))


PRETRAIN_TASKS: tuple[Task, ...] = tuple(
    _t(s)
    for s in (
        "0-1-4-5-0-1",
        "0-1-4-5-2-3",
        "0-1-6-7-2-3",
        "2-3-0-1-4-5",
        "2-3-6-7-2-3",
        "2-3-6-7-4-5",
        "4-5-0-1-4-5",
        "4-5-0-1-6-7",
        "4-5-2-3-6-7",
        "6-7-2-3-0-1",
        "6-7-2-3-6-7",
        "6-7-4-5-0-1",
        "0-1-6-7-4-5",
        "2-3-0-1-6-7",
        "4-5-2-3-0-1",
        "6-7-4-5-2-3",
    )
)
"""The 16 pretraining tasks of Table A1, three subgoals (six colours) each, in table order.

Expert data for the base model is generated on these; note that no task contains the
subgoal transitions 0-1 -> 2-3 -> 4-5 -> 6-7 in a row the way :data:`POST_TASK` does."""

POST_TASK: Task = (0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3)
"""The post-training (RL) task ``0-1-2-3-4-5-6-7-0-1-2-3``: six subgoals in new orders."""

SEEN_TASK: Task = (0, 1, 4, 5, 2, 3, 6, 7, 4, 5, 0, 1)
"""``seen``: :data:`POST_TASK`'s control, ``0-1-4-5-2-3-6-7-4-5-0-1``. As long (six subgoals),
but each of its subgoal transitions (0-1 -> 4-5 -> 2-3 -> 6-7 -> 4-5 -> 0-1) occurs in
:data:`PRETRAIN_TASKS`, though the whole sequence is none of them: RL on it needs the
abstraction to chain segments, not to compose transitions the base never saw."""


def task_blind_ceilings(
    tasks: Sequence[Task], prior: Sequence[Task] | None = None
) -> dict[str, float]:
    """What a base model can reach free-running on ``tasks`` (each equally likely) when it
    imitates an expert that trained on ``prior`` (default: ``tasks``) but never sees the task.

    A fresh episode does not reveal its task, so the best such a base can do is what the
    expert data teach it: after the colours entered so far, enter next each colour that
    continues some prior task, in proportion to those tasks (the posterior predictive).
    With ``n(p)`` prior tasks starting with the prefix ``p`` of ``N``, it completes the
    first ``k`` colours of task ``t`` with probability ``n(t[:k]) / N`` even when it walks
    perfectly. Returns, averaged over ``tasks``:

    * ``success``: all colours (1/16 on the 16 pretraining tasks of either environment);
    * ``colours_per_episode``: colours completed;
    * ``next_correct_after_K``: having completed ``K``, the next colour entered is the
      task's (the ratio of completing ``K + 1`` to completing ``K``).

    Example::

        >>> round(task_blind_ceilings(PRETRAIN_TASKS)["success"], 4)
        0.0625
    """
    prior = list(tasks if prior is None else prior)
    tasks = list(tasks)

    def reach(t: Task, k: int) -> float:  # completes the first k colours of t
        return sum(p[:k] == t[:k] for p in prior) / len(prior)

    longest = max(len(t) for t in tasks)
    done = [float(np.mean([reach(t, k) if k <= len(t) else 0.0 for t in tasks]))
            for k in range(longest + 1)]  # fmt: skip
    out = {
        "success": float(np.mean([reach(t, len(t)) for t in tasks])),
        "colours_per_episode": float(sum(done[1:])),
    }
    for k in range(longest):
        out[f"next_correct_after_{k}"] = done[k + 1] / done[k] if done[k] else float("nan")
    return out


def subgoal_of_colour(colour: int) -> int:
    """Return the abstract subgoal label (``0..N_SUBGOALS-1``) of a colour: ``colour // 2``."""
    return int(colour) // 2


def format_task(task: Sequence[int]) -> str:
    """Write a task as colours joined by ``-``, e.g. ``(0, 1, 2, 3)`` -> ``"0-1-2-3"``."""
    return "-".join(str(int(c)) for c in task)


_HOW = "write a task as colours joined by '-', e.g. 0-1-2-3, or 'post' or 'seen'"
_NAMED = {"post": POST_TASK, "seen": SEEN_TASK}


def parse_task(spec: TaskSpec, n_colours: int = N_COLOURS) -> Task:
    """Parse and validate a task.

    Args:
        spec: ``"post"`` (the post-training task :data:`POST_TASK`), ``"seen"``
            (:data:`SEEN_TASK`, its control of pretraining transitions), a string of colours
            joined by ``-`` such as ``"0-1-4-5"``, or a sequence of ints.
        n_colours: colours must lie in ``0..n_colours-1``.

    Returns:
        The task as a tuple of Python ints.

    Raises:
        ValueError: a one-line message naming the bad value and what is allowed, if the
            task is empty, has a non-integer or out-of-range colour, or repeats a colour
            twice in a row (``1-1``). Repeats are rejected because the expert, the
            dataset's subgoal labels and the "enter a colour" rule all assume that the
            next target differs from the colour the agent is standing on.
    """
    if isinstance(spec, str):
        text = spec
        if text != text.strip():
            raise ValueError(f"invalid task {spec!r}: remove the spaces around it; {_HOW}")
        if text.lower() in _NAMED:
            named = _NAMED[text.lower()]
            if max(named) >= n_colours:  # a gridworld task asked of the ant
                raise ValueError(
                    f"invalid task {spec!r}: it names {format_task(named)}, whose colours go "
                    f"beyond 0..{n_colours - 1}; {_HOW}"
                )
            return named
        if not text:
            raise ValueError(f"invalid task {spec!r}: the task is empty; {_HOW}")
        colours: list[int] = []
        for part in text.split("-"):
            try:
                colours.append(int(part))
            except ValueError:
                raise ValueError(
                    f"invalid task {spec!r}: {part!r} is not a colour number; {_HOW}"
                ) from None
        shown = spec
    else:
        colours = []
        for c in spec:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
                raise ValueError(
                    f"invalid task {list(spec)!r}: {c!r} is not an integer colour; {_HOW}"
                )
            colours.append(int(c))
        shown = format_task(colours)
    if not colours:
        raise ValueError(f"invalid task {shown!r}: the task is empty; {_HOW}")
    if len(colours) > MAX_TASK_LEN:
        raise ValueError(
            f"invalid task: {len(colours)} colours; at most {MAX_TASK_LEN} are allowed ({_HOW})"
        )
    for c in colours:
        if not 0 <= c < n_colours:
            raise ValueError(
                f"invalid task {shown!r}: colour {c} is out of range 0..{n_colours - 1}; {_HOW}"
            )
    for a, b in zip(colours[:-1], colours[1:], strict=True):
        if a == b:
            raise ValueError(
                f"invalid task {shown!r}: colour {a} is repeated twice in a row; "
                f"consecutive colours must differ ({_HOW})"
            )
    return tuple(colours)


def env_rngs(seed: int | Sequence[int], n_envs: int) -> list[np.random.Generator]:
    """One generator per env of a batched env: ``seed`` is one int (env i gets ``seed + i``)
    or one seed per env (gymnasium's seeding, as each env's own ``reset(seed=...)``)."""
    seeds = [int(seed) + i for i in range(n_envs)] if np.ndim(seed) == 0 else list(seed)
    if len(seeds) != n_envs:
        raise ValueError(f"need one seed per env ({n_envs}), got {len(seeds)}")
    return [seeding.np_random(int(s))[0] for s in seeds]
