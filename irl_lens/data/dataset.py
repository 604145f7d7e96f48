"""Trajectory datasets: the on-disk format, loading with validation, and batching.

On-disk format (``FORMAT_VERSION = 1``): a folder with two files.

``meta.json``
    ``{"format": "irl_lens.trajectories", "version": 1, "env": "gridworld" | "ant",
    "split": "pretrain" | "clean", "obs_kind": "grid" | "vector", "obs_dim": int,
    "action_kind": "discrete" | "continuous", "n_actions": int, "n_episodes": int,
    "n_steps": int, "seed": int, "eps": float, ...}`` (extra keys allowed).

``arrays.npz`` (uncompressed numpy arrays; ``N`` episodes, ``S`` steps in all)

    ==================  ================  ==============================================
    key                 dtype, shape      meaning
    ==================  ================  ==============================================
    episode_offsets     int64 [N+1]       steps of episode i are ``offsets[i]:offsets[i+1]``
    task                int8 [N, K]       task colours, padded with -1
    task_len            int8 [N]          number of colours in the task
    success             bool [N]          whether the episode completed its task
    action              uint8 [S]         (discrete) or float32 [S, n_actions] (continuous)
    subgoal             int8 [S]          subgoal label at step t (-1 after success)
    target_colour       int8 [S]          colour the expert heads for at step t
    layout              uint8 [N, 49]     (grid) cell codes: 0 empty, 1+c colour c, 9 wall
    agent_pos           uint8 [S]         (grid) agent cell before the step's action
    final_agent_pos     uint8 [N]         (grid) agent cell after the last action
    obs                 float32 [S, D]    (vector) observation before the step's action
    final_obs           float32 [N, D]    (vector) observation after the last action
    ==================  ================  ==============================================

A gridworld observation is stored compactly: the layout never changes within an
episode, so one row of cell codes per episode plus one agent cell per step carries the
paper's whole one-hot observation (see :func:`irl_lens.envs.gridworld_layout.encode_observation`).
The model's token for step t is the 49 codes followed by the agent cell (50 integers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from irl_lens import runs
from irl_lens.envs.pinpad import ANT_N_COLOURS, N_COLOURS, N_SUBGOALS

logger = logging.getLogger(__name__)

FORMAT_NAME = "irl_lens.trajectories"
FORMAT_VERSION = 1
N_CELLS = 49
SPLITS = ("pretrain", "clean")
"""Dataset splits: ``pretrain`` (noisy expert, the base model's data) and ``clean``."""


class DatasetError(ValueError):
    """A dataset folder is missing, corrupt, or does not match the expected schema."""


def _schema(meta: dict) -> dict[str, tuple[tuple[str, ...], str]]:
    """Expected arrays: key -> (symbolic shape, dtype)."""
    common = {
        "episode_offsets": (("N+1",), "int64"),
        "task": (("N", "K"), "int8"),
        "task_len": (("N",), "int8"),
        "success": (("N",), "bool"),
        "subgoal": (("S",), "int8"),
        "target_colour": (("S",), "int8"),
    }
    if meta["action_kind"] == "discrete":
        common["action"] = (("S",), "uint8")
    else:
        common["action"] = (("S", "A"), "float32")
    if meta["obs_kind"] == "grid":
        common |= {
            "layout": (("N", "49"), "uint8"),
            "agent_pos": (("S",), "uint8"),
            "final_agent_pos": (("N",), "uint8"),
        }
    else:
        common |= {"obs": (("S", "D"), "float32"), "final_obs": (("N", "D"), "float32")}
    return common


@dataclass
class TrajectoryDataset:
    """Expert trajectories held in flat numpy arrays (see the module docstring)."""

    meta: dict
    arrays: dict[str, np.ndarray] = field(repr=False)
    _tensors: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # ---- basic views -------------------------------------------------------------
    @property
    def n_episodes(self) -> int:
        return len(self.arrays["episode_offsets"]) - 1

    @property
    def n_steps(self) -> int:
        return int(self.arrays["episode_offsets"][-1])

    @property
    def offsets(self) -> np.ndarray:
        return self.arrays["episode_offsets"]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.arrays["episode_offsets"])

    def tensors(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """The arrays :func:`make_batch` gathers from, as tensors on ``device`` (default: the
        CPU, sharing the numpy memory), made once per device and kept."""
        dev = torch.device(device) if device is not None else torch.device("cpu")
        key = str(dev)
        if key not in self._tensors:
            self._tensors[key] = {
                k: torch.from_numpy(np.ascontiguousarray(self.arrays[k])).to(dev)
                for k in _BATCH_ARRAYS
                if k in self.arrays
            }
        return self._tensors[key]

    def tasks(self) -> list[tuple[int, ...]]:
        t, n = self.arrays["task"], self.arrays["task_len"]
        return [tuple(int(c) for c in t[i, : n[i]]) for i in range(self.n_episodes)]

    def subset(self, episodes: np.ndarray) -> TrajectoryDataset:
        """A new dataset holding only the given episodes (in that order)."""
        episodes = np.asarray(episodes, dtype=np.int64)
        lengths = self.lengths[episodes]
        offsets = np.zeros(len(episodes) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        step_idx = _step_indices(self.offsets[episodes], lengths)
        per_episode = {"task", "task_len", "success", "layout", "final_agent_pos", "final_obs"}
        out = {"episode_offsets": offsets}
        for key, arr in self.arrays.items():
            if key == "episode_offsets":
                continue
            out[key] = arr[episodes] if key in per_episode else arr[step_idx]
        meta = dict(self.meta, n_episodes=len(episodes), n_steps=int(offsets[-1]))
        return TrajectoryDataset(meta, out)

    def fingerprint(self) -> str:
        """SHA-256 of every array (name, dtype, shape, bytes): equal data, equal digest.
        Runs store it so that ``--resume`` on other data is refused."""
        h = hashlib.sha256()
        for key in sorted(self.arrays):
            arr = np.ascontiguousarray(self.arrays[key])
            h.update(f"{key}:{arr.dtype}:{arr.shape};".encode())
            h.update(arr.tobytes())
        return h.hexdigest()

    # ---- persistence -------------------------------------------------------------
    def save(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Write the folder atomically (a temporary sibling, then rename), under the output
        policy of :func:`irl_lens.runs.check_output`: an existing folder is replaced only
        with ``overwrite`` and only when it is an irl-lens dataset."""
        validate(self.meta, self.arrays)
        out_dir = runs.check_output(out_dir, runs.DATASET_KIND, overwrite=overwrite)
        with runs.staged(out_dir, overwrite=overwrite) as tmp:
            with open(tmp / "arrays.npz", "wb") as f:
                np.savez(f, **self.arrays)
            runs.write_json(tmp / "meta.json", self.meta)
        return out_dir


def pack_chunks(
    chunks: list[dict], max_steps: int
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """Join chunks of padded ``[episodes, max_steps]`` rollouts (shared by every env's generator).

    Each chunk holds ``task [n, K]`` (padded with -1), ``task_len``, ``success``, ``layout``,
    ``length`` and per-step arrays. Returns ``(cat, valid, arrays)``: every chunk key joined
    along episodes (tasks widened to the longest), the ``[episodes, max_steps]`` mask of real
    steps (``cat[key][valid]`` flattens a per-step array; row-major boolean indexing keeps
    each episode's steps in order, episodes in order), and the format's per-episode arrays.
    """
    cat = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0] if k != "task"}
    width = max(c["task"].shape[1] for c in chunks)
    task = np.concatenate(
        [np.pad(c["task"], ((0, 0), (0, width - c["task"].shape[1])), constant_values=-1)
         for c in chunks]
    )  # fmt: skip
    lengths = cat["length"].astype(np.int64)
    valid = np.arange(max_steps)[None, :] < lengths[:, None]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    arrays = {
        "episode_offsets": offsets,
        "task": task.astype(np.int8),
        "task_len": cat["task_len"].astype(np.int8),
        "success": cat["success"].astype(bool),
        "layout": cat["layout"].astype(np.uint8),
    }
    return cat, valid, arrays


def _step_indices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(start, start + length)`` for each episode, vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ep_of_step = np.repeat(np.arange(len(lengths)), lengths)
    first = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=first[1:])
    return starts[ep_of_step] + (np.arange(total) - first[ep_of_step])


_ENVS = {"gridworld": (N_COLOURS, N_SUBGOALS), "ant": (ANT_N_COLOURS, ANT_N_COLOURS)}
"""env -> (colours, subgoal labels) its data may hold."""


def _check_meta_field(meta: dict, key: str, kind: type, where: str, minimum: int = 0) -> None:
    value = meta.get(key)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok and kind is int:
        ok = value >= minimum
    if not ok:
        what = f"an integer >= {minimum}" if kind is int else kind.__name__
        raise DatasetError(f"{where}: meta.json {key!r} is {value!r}; expected {what}")


def validate(meta: dict, arrays: dict[str, np.ndarray], where: str = "dataset") -> None:
    """Check the schema, dtypes, shapes and value ranges; raise :class:`DatasetError`
    naming the first thing that is wrong (field, value, what is allowed)."""
    if meta.get("format") != FORMAT_NAME:
        raise DatasetError(
            f"{where}: meta.json 'format' is {meta.get('format')!r}, expected {FORMAT_NAME!r}"
        )
    if meta.get("version") != FORMAT_VERSION:
        raise DatasetError(
            f"{where}: format version {meta.get('version')!r} is not supported "
            f"(this irl_lens reads version {FORMAT_VERSION})"
        )
    for key, allowed in (
        ("obs_kind", ("grid", "vector")),
        ("action_kind", ("discrete", "continuous")),
    ):
        if meta.get(key) not in allowed:
            raise DatasetError(
                f"{where}: meta.json '{key}' is {meta.get(key)!r}; allowed: {', '.join(allowed)}"
            )
    if meta.get("env") not in _ENVS:
        raise DatasetError(
            f"{where}: meta.json 'env' is {meta.get('env')!r}; allowed: {', '.join(_ENVS)}"
        )
    _check_meta_field(meta, "n_actions", int, where, minimum=1)
    if meta["obs_kind"] == "vector":
        _check_meta_field(meta, "obs_dim", int, where, minimum=1)
    for key in ("n_episodes", "n_steps"):
        if key in meta:
            _check_meta_field(meta, key, int, where, minimum=1)
    schema = _schema(meta)
    missing = sorted(set(schema) - set(arrays))
    if missing:
        raise DatasetError(f"{where}: arrays.npz lacks {', '.join(missing)}")
    offsets = arrays["episode_offsets"]
    if offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or np.any(np.diff(offsets) < 1):
        raise DatasetError(f"{where}: 'episode_offsets' must start at 0 and strictly increase")
    sizes = {"N": len(offsets) - 1, "N+1": len(offsets), "S": int(offsets[-1]), "49": N_CELLS}
    if meta["action_kind"] == "continuous":
        sizes["A"] = meta["n_actions"]
    if meta["obs_kind"] == "vector":
        sizes["D"] = meta["obs_dim"]
    for key, (shape, dtype) in schema.items():
        arr = arrays[key]
        if str(arr.dtype) != dtype:
            raise DatasetError(f"{where}: '{key}' has dtype {arr.dtype}, expected {dtype}")
        if arr.ndim != len(shape):
            raise DatasetError(
                f"{where}: '{key}' has {arr.ndim} dims, expected {len(shape)} ({' x '.join(shape)})"
            )
        for dim, sym in zip(arr.shape, shape, strict=True):
            if sym in sizes and dim != sizes[sym]:
                raise DatasetError(
                    f"{where}: '{key}' has shape {arr.shape}, expected "
                    f"{' x '.join(shape)} with {sym}={sizes[sym]}"
                )
    for key, size in (("n_episodes", "N"), ("n_steps", "S")):
        if meta.get(key) not in (None, sizes[size]):
            raise DatasetError(
                f"{where}: meta.json {key!r} is {meta[key]}, arrays hold {sizes[size]}"
            )
    _check_ranges(meta, arrays, where)


def _check_range(arrays: dict, key: str, low: int, high: int, where: str, allowed: str) -> None:
    arr = arrays[key]
    if arr.size and (arr.min() < low or arr.max() > high):
        bad = arr.max() if arr.max() > high else arr.min()
        raise DatasetError(f"{where}: {key!r} holds {bad}; allowed {allowed}")


def _check_ranges(meta: dict, arrays: dict[str, np.ndarray], where: str) -> None:
    """Every array's values against meta.json and the env's colours."""
    n_colours, n_subgoals = _ENVS[meta["env"]]
    if meta["action_kind"] == "discrete":
        n = meta["n_actions"]
        _check_range(arrays, "action", 0, n - 1, where, f"0..{n - 1} (n_actions {n})")
    _check_range(arrays, "subgoal", -1, n_subgoals - 1, where, f"-1..{n_subgoals - 1}")
    _check_range(arrays, "target_colour", -1, n_colours - 1, where, f"-1..{n_colours - 1}")
    task, task_len = arrays["task"], arrays["task_len"].astype(np.int64)
    k = task.shape[1]
    if task_len.size and (task_len.min() < 1 or task_len.max() > k):
        raise DatasetError(f"{where}: 'task_len' must lie in 1..{k} (the task array's width)")
    in_task = np.arange(k)[None, :] < task_len[:, None]  # [N, K]
    colours = task[in_task]
    if colours.size and (colours.min() < 0 or colours.max() >= n_colours):
        bad = colours.max() if colours.max() >= n_colours else colours.min()
        raise DatasetError(f"{where}: 'task' holds colour {bad}; allowed 0..{n_colours - 1}")
    if np.any(task[~in_task] != -1):
        raise DatasetError(f"{where}: 'task' must be padded with -1 after 'task_len' colours")
    if meta["obs_kind"] == "grid":
        _check_range(arrays, "layout", 0, 9, where, "0..9 (0 empty, 1+c colour c, 9 wall)")
        for key in ("agent_pos", "final_agent_pos"):
            _check_range(arrays, key, 0, N_CELLS - 1, where, f"0..{N_CELLS - 1}")
    for key in ("obs", "final_obs", "action"):
        arr = arrays.get(key)
        if arr is not None and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise DatasetError(f"{where}: {key!r} holds NaN or infinite values")


def load_dataset(path: str | Path) -> TrajectoryDataset:
    """Load and validate a dataset folder written by :meth:`TrajectoryDataset.save`.

    Example::

        ds = load_dataset("runs/demo/data-clean")
        batch = make_batch(ds, np.arange(8))  # padded tensors of 8 episodes
    """
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(
            f"dataset folder {str(path)!r} does not exist "
            "(make one with `irl-lens data gridworld --out DIR`)"
        )
    meta_path, arr_path = path / "meta.json", path / "arrays.npz"
    for p in (meta_path, arr_path):
        if not p.is_file():
            raise DatasetError(f"{path}: missing {p.name}; is this an irl-lens dataset folder?")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(
            f"{meta_path}: not valid JSON ({e.msg if hasattr(e, 'msg') else e})"
        ) from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_path}: expected a JSON object")
    try:
        with np.load(arr_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError, EOFError ...
        raise DatasetError(
            f"{arr_path}: cannot be read as a numpy .npz archive ({type(e).__name__}: {e})"
        ) from None
    validate(meta, arrays, where=str(path))
    return TrajectoryDataset(meta, arrays)


# ---- batching --------------------------------------------------------------------------
@dataclass
class Batch:
    """A padded batch of whole episodes, ready for the model."""

    obs: torch.Tensor  # [batch, pos, 50] long (grid) or [batch, pos, D] float
    action: torch.Tensor  # [batch, pos] long or [batch, pos, A] float
    next_obs: torch.Tensor  # [batch, pos] long (next agent cell) or [batch, pos, D] float
    subgoal: torch.Tensor  # [batch, pos] long, -1 on padding
    target_colour: torch.Tensor  # [batch, pos] long, -1 on padding
    mask: torch.Tensor  # [batch, pos] float, 1 on real steps
    episodes: np.ndarray  # [batch] dataset episode indices

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum().item())

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor on ``device`` (non-blocking where it can be)."""
        if torch.device(device) == self.obs.device:
            return self
        move = {f.name: getattr(self, f.name).to(device, non_blocking=True)
                for f in dataclasses.fields(self) if f.name != "episodes"}  # fmt: skip
        return dataclasses.replace(self, **move)


#: The arrays a batch is gathered from (:func:`make_batch`).
_BATCH_ARRAYS = ("episode_offsets", "agent_pos", "layout", "final_agent_pos", "obs",
                 "final_obs", "action", "subgoal", "target_colour")  # fmt: skip


def make_batch(
    ds: TrajectoryDataset, episodes: np.ndarray, device: torch.device | str | None = None
) -> Batch:
    """Pad the given episodes into one :class:`Batch` (length = longest episode), gathered
    on ``device`` (default: the CPU).

    The dataset's arrays become tensors on ``device`` once (:meth:`TrajectoryDataset.tensors`;
    on the CPU they share the numpy memory), and every batch is gathered there by index
    arithmetic, so a GPU run moves no batch over the bus; the only host work is the batch's
    length, read from the host-side offsets (no device sync).
    """
    t = ds.tensors(device)
    dev = t["episode_offsets"].device
    episodes = np.asarray(episodes, dtype=np.int64)
    lengths_np = ds.lengths[episodes]
    n_pos = int(lengths_np.max())
    ep = torch.from_numpy(episodes).to(dev)
    starts = t["episode_offsets"][ep]  # [batch]
    lengths = torch.from_numpy(lengths_np).to(dev)
    pos = torch.arange(n_pos, device=dev)
    valid = pos[None, :] < lengths[:, None]  # [batch, pos]
    idx = torch.where(valid, starts[:, None] + pos[None, :], 0)  # [batch, pos]
    last = pos[None, :] == (lengths[:, None] - 1)  # [batch, pos]
    after = (idx + 1).clamp(max=ds.n_steps - 1)
    if ds.meta["obs_kind"] == "grid":
        agent = t["agent_pos"][idx].long()  # [batch, pos]
        layout = t["layout"][ep].long()  # [batch, 49]
        obs_t = torch.cat([layout[:, None, :].expand(-1, n_pos, -1), agent[..., None]], dim=-1)
        nxt = torch.where(
            last, t["final_agent_pos"][ep].long()[:, None], t["agent_pos"][after].long()
        )
        next_t = torch.where(valid, nxt, 0)
    else:
        obs_t = (t["obs"][idx] * valid[..., None]).float()
        nxt = torch.where(last[..., None], t["final_obs"][ep][:, None, :], t["obs"][after])
        next_t = (nxt * valid[..., None]).float()
    if ds.meta["action_kind"] == "discrete":
        action = torch.where(valid, t["action"][idx].long(), 0)
    else:
        action = (t["action"][idx] * valid[..., None]).float()

    def labels(key: str) -> torch.Tensor:
        return torch.where(valid, t[key][idx].long(), -1)

    return Batch(
        obs=obs_t,
        action=action,
        next_obs=next_t,
        subgoal=labels("subgoal"),
        target_colour=labels("target_colour"),
        mask=valid.float(),
        episodes=episodes,
    )


def bucketed_batches(
    lengths: np.ndarray, tokens_per_batch: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Group episodes of similar length so that padding stays small.

    Episodes are shuffled, sorted by length (stable, so ties stay shuffled), cut into
    consecutive groups whose padded size ``n * max_len`` stays within
    ``tokens_per_batch``, and the groups are returned in random order. Every episode
    appears exactly once.
    """
    order = rng.permutation(len(lengths))
    order = order[np.argsort(lengths[order], kind="stable")]
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        max_len = int(lengths[order[start]])
        end = start
        while end < len(order):
            max_len = max(max_len, int(lengths[order[end]]))
            if (end - start + 1) * max_len > tokens_per_batch and end > start:
                break
            end += 1
        batches.append(order[start:end])
        start = end
    return [batches[i] for i in rng.permutation(len(batches))]


def iterate_batches(
    ds: TrajectoryDataset,
    tokens_per_batch: int,
    seed: int,
    start_epoch: int = 0,
    device: torch.device | str | None = None,
) -> Iterator[tuple[int, Batch]]:
    """Endless stream of ``(epoch, batch)`` gathered on ``device``; epoch ``k`` is shuffled
    with seed ``(seed, k)``."""
    epoch = start_epoch
    while True:
        rng = np.random.default_rng([seed, epoch])
        for episodes in bucketed_batches(ds.lengths, tokens_per_batch, rng):
            yield epoch, make_batch(ds, episodes, device)
        epoch += 1
