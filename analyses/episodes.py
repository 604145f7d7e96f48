"""One episode as figures: the agent's path (gridworld grid, or ant top-down), and its timeline.

:func:`path_figure` picks the view from the record: an ant record (``env = "ant"``, from
:meth:`irl_lens.rollout.ant.AntEngineRollout.episode`) holds the torso's ``xy`` per step
and a 16-cell layout, and is drawn with :func:`irl_lens.envs.ant_figure.trajectory_figure`.

An episode record is a dict with ``layout`` (49 cell codes), ``agent_pos`` (cell per step),
``final_agent_pos``, ``subgoal`` (true label per step) and, when a metacontroller acted,
``beta``, ``switched`` and ``codes`` per step (what :func:`irl_lens.train.internal_rl.collect`
stores in ``episodes.json`` and :func:`steered_episode` returns).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from irl_lens.envs.ant_figure import trajectory_figure
from irl_lens.envs.gridworld_layout import EMPTY, WALL
from irl_lens.envs.pinpad import GRID_SIZE
from irl_lens.rollout.kit import env_kit

COLOUR_HEX = ("#e6194b", "#f58231", "#ffe119", "#3cb44b", "#42d4f4", "#4363d8", "#911eb4",
              "#f032e6")  # fmt: skip
WALL_HEX = "#555555"


def path_figure(episode: dict, title: str | None = None):
    """The episode's path: :func:`grid_figure` for the gridworld, the ant's top-down view."""
    if episode.get("env") == "ant":
        ok = "success" if episode.get("success") else episode.get("end_reason", "failed")
        return trajectory_figure(
            np.asarray(episode["layout"]), np.asarray(episode["xy"]),
            title=title or f"ant-pinpad episode ({ok}, {len(episode['xy'])} steps)",
        )  # fmt: skip
    return grid_figure(episode, title)


def grid_figure(episode: dict, title: str | None = None):
    """The layout with the agent's path (start circle, end star); colours labelled 0..7."""

    layout = np.asarray(episode["layout"])
    fig = go.Figure()
    shapes = []
    for cell, code in enumerate(layout.tolist()):
        r, c = divmod(cell, GRID_SIZE)
        fill = "#ffffff" if code == EMPTY else WALL_HEX if code == WALL else COLOUR_HEX[code - 1]
        shapes.append({"type": "rect", "x0": c - 0.5, "x1": c + 0.5, "y0": r - 0.5,
                       "y1": r + 0.5, "fillcolor": fill, "line": {"color": "#cccccc"},
                       "layer": "below"})  # fmt: skip
        if EMPTY < code < WALL:
            fig.add_annotation(x=c, y=r, text=str(code - 1), showarrow=False,
                               font={"size": 16, "color": "black"})  # fmt: skip
    path = [*episode["agent_pos"], episode.get("final_agent_pos", episode["agent_pos"][-1])]
    rows, cols = np.divmod(np.asarray(path), GRID_SIZE)
    jitter = np.linspace(-0.15, 0.15, len(path))  # separate revisits a little
    fig.add_trace(go.Scatter(x=cols + jitter, y=rows + jitter, mode="lines+markers",
                             line={"color": "black", "width": 2}, marker={"size": 5},
                             name="path", text=[f"t={t}" for t in range(len(path))]))  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=[cols[0]],
            y=[rows[0]],
            mode="markers",
            name="start",
            marker={"size": 14, "symbol": "circle-open", "color": "black"},
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[cols[-1]],
            y=[rows[-1]],
            mode="markers",
            name="end",
            marker={"size": 16, "symbol": "star", "color": "black"},
        )
    )
    fig.update_layout(
        shapes=shapes,
        title=title or ("success" if episode.get("success") else "episode"),
        xaxis={"range": [-0.5, GRID_SIZE - 0.5], "showgrid": False, "zeroline": False,
               "dtick": 1},
        yaxis={"range": [GRID_SIZE - 0.5, -0.5], "showgrid": False, "zeroline": False,
               "scaleanchor": "x", "dtick": 1},
        width=520, height=520,
    )  # fmt: skip
    return fig


def timeline_figure(episode: dict):
    """beta_t, switches, the code in force (first two dimensions) and the true subgoal."""

    sub = np.asarray(episode["subgoal"])
    t = np.arange(len(sub))
    has_beta = "beta" in episode
    fig = make_subplots(rows=3 if has_beta else 1, cols=1, shared_xaxes=True,
                        subplot_titles=(("true subgoal", "beta_t (switches marked)",
                                         "code z_t (first dims)") if has_beta
                                        else ("true subgoal",)))  # fmt: skip
    fig.add_trace(go.Scatter(x=t, y=sub, mode="lines+markers", line={"shape": "hv"},
                             name="true subgoal"), row=1, col=1)  # fmt: skip
    fig.update_yaxes(range=[-0.5, 3.5], dtick=1, row=1, col=1)
    if has_beta:
        beta = np.asarray(episode["beta"])
        fig.add_trace(go.Scatter(x=t, y=beta, mode="lines", name="beta"), row=2, col=1)
        sw = np.flatnonzero(np.asarray(episode.get("switched", []), dtype=bool))
        fig.add_trace(go.Scatter(x=sw, y=beta[sw], mode="markers", name="switch",
                                 marker={"symbol": "x", "size": 10}), row=2, col=1)  # fmt: skip
        fig.update_yaxes(range=[-0.05, 1.05], row=2, col=1)
        codes = np.asarray(episode.get("codes", []))
        for d in range(min(2, codes.shape[1] if codes.ndim == 2 else 0)):
            fig.add_trace(go.Scatter(x=t, y=codes[:, d], mode="lines", line={"shape": "hv"},
                                     name=f"z[{d}]"), row=3, col=1)  # fmt: skip
    fig.update_xaxes(title_text="time step t", row=3 if has_beta else 1, col=1)
    fig.update_layout(height=560 if has_beta else 260, title="Episode timeline")
    return fig


def steered_episode(base, mc, layer: int, code, at_step: int, *, seed: int = 0, task=None):
    """One rollout in a new layout: base model alone until ``at_step``, then ``code`` forced.

    Returns an episode record with the first subgoal completed after the switch
    (``reached``: subgoal index or -1; gridworld: a colour pair, ant: a colour) and the
    colours ``entered`` (ant: the task colours completed). Runs in the model's own env.
    """

    kit = env_kit(base, layer)
    env = kit.make_env(1, task=task, seed=seed, stream=7000)
    z = torch.as_tensor(np.asarray(code, dtype=np.float32))[None, None]

    def fn(state):
        if state.t < at_step:
            return None
        return lambda e: mc.apply_code(e, z.expand(e.shape[0], 1, -1))

    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        ro = kit.engine.run(env, controller_fn=fn, generator=gen)
    n = int(ro.length[0])
    if kit.name == "ant":  # every colour is a subgoal; the env ends an episode on a wrong one
        done = np.append(ro.n_done[0, :n], ro.final_n_done[0])
        steps = [t for t in range(n) if done[t + 1] > done[t]]
        entered = [int(ro.subgoal[0, t]) for t in steps]
        reached = next((c for c, t in zip(entered, steps, strict=True) if t >= at_step), -1)
        return ro.episode(0) | {"entered": entered, "reached": reached}
    entered = ro.entered()[0]
    after = [c for c, step in zip(entered, _entry_steps(ro, n), strict=True) if step >= at_step]
    reached = next(
        (a // 2 for a, b in zip(after, after[1:], strict=False) if a % 2 == 0 and b == a + 1), -1
    )
    return ro.episode(0) | {"entered": entered, "reached": reached}


def _entry_steps(ro, n: int) -> list[int]:
    """Steps at which the agent moved onto a colour cell (same order as ``ro.entered()``)."""
    pos = np.append(ro.agent_pos[0, :n], ro.final_agent_pos[0])
    out = []
    for t in range(n):
        nxt = pos[t + 1]
        if nxt != pos[t] and EMPTY < ro.layout[0, nxt] < WALL:
            out.append(t)
    return out
