"""ant-pinpad trajectories drawn top-down with plotly, without MuJoCo or a renderer."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from irl_lens.envs.ant_layout import (
    ANT_EMPTY,
    ANT_GRID_SIZE,
    ANT_WALL,
    CELL_SIZE,
    TILE_RGBA,
    cell_centres,
)

__all__ = ["trajectory_figure"]


def trajectory_figure(
    layout: np.ndarray,
    xy: np.ndarray,
    cell_size: float = CELL_SIZE,
    title: str = "ant-pinpad trajectory (top-down)",
) -> go.Figure:
    """A plotly top-down view: cells, coloured tiles, the wall and the torso path ``xy [T, 2]``."""
    fig = go.Figure()
    half = ANT_GRID_SIZE * cell_size / 2
    centres = cell_centres(cell_size)
    for cell, code in enumerate(np.asarray(layout).tolist()):
        if code == ANT_EMPTY:
            continue
        cx, cy = centres[cell]
        if code == ANT_WALL:
            rgb, label = "rgb(70,70,70)", "wall"
        else:
            r, g, b, _ = TILE_RGBA[code - 1]
            rgb, label = f"rgb({int(255 * r)},{int(255 * g)},{int(255 * b)})", str(code - 1)
        fig.add_shape(
            type="rect",
            x0=cx - cell_size / 2, x1=cx + cell_size / 2,
            y0=cy - cell_size / 2, y1=cy + cell_size / 2,
            fillcolor=rgb, opacity=0.6, line_width=0,
        )  # fmt: skip
        fig.add_annotation(x=cx, y=cy, text=label, showarrow=False, font={"size": 16})
    for k in range(ANT_GRID_SIZE + 1):
        v = -half + k * cell_size
        fig.add_shape(type="line", x0=v, x1=v, y0=-half, y1=half, line={"color": "#bbb"})
        fig.add_shape(type="line", x0=-half, x1=half, y0=v, y1=v, line={"color": "#bbb"})
    xy = np.asarray(xy)
    fig.add_trace(
        go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="lines", name="torso", line={"color": "black"})
    )
    if len(xy):
        fig.add_trace(
            go.Scatter(x=xy[:1, 0], y=xy[:1, 1], mode="markers", name="start",
                       marker={"size": 10, "color": "green"})
        )  # fmt: skip
    fig.update_layout(title=title, width=520, height=520, showlegend=True)
    fig.update_xaxes(range=[-half - 0.2, half + 0.2], title="x (m)")
    fig.update_yaxes(range=[-half - 0.2, half + 0.2], title="y (m)", scaleanchor="x", scaleratio=1)
    return fig
