"""Datasets: generation, the on-disk format, validation errors and batching."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from irl_lens.data.dataset import (
    DatasetError,
    TrajectoryDataset,
    bucketed_batches,
    load_dataset,
    make_batch,
)
from irl_lens.data.generate import generate_gridworld
from irl_lens.envs.gridworld_layout import NEXT_CELL, WALL
from irl_lens.envs.pinpad import PRETRAIN_TASKS, parse_task


def test_generation_is_deterministic_and_splits_differ():
    a = generate_gridworld(50, "pretrain", seed=3, progress=False)
    b = generate_gridworld(50, "pretrain", seed=3, progress=False)
    c = generate_gridworld(50, "clean", seed=3, progress=False)
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
    assert not np.array_equal(a.arrays["layout"], c.arrays["layout"])


def test_episodes_replay_in_the_env(tiny_dataset: TrajectoryDataset):
    """Stored actions, replayed from the stored layout, reproduce the stored positions."""
    ds = tiny_dataset
    a = ds.arrays
    tasks = ds.tasks()
    assert set(tasks) <= set(PRETRAIN_TASKS)
    for i in range(ds.n_episodes):
        s, e = ds.offsets[i], ds.offsets[i + 1]
        layout = a["layout"][i]
        pos = int(a["agent_pos"][s])
        for t in range(s, e):
            assert pos == a["agent_pos"][t]
            nxt = int(NEXT_CELL[pos, a["action"][t]])
            pos = pos if layout[nxt] == WALL else nxt
        assert pos == a["final_agent_pos"][i]
        assert a["success"][i]
        # the subgoal label is the pair of the colour being headed for
        tc = a["target_colour"][s:e]
        np.testing.assert_array_equal(a["subgoal"][s:e], tc // 2)
        assert tc[0] == tasks[i][0]


def test_round_trip(tmp_path, tiny_dataset):
    tiny_dataset.save(tmp_path / "d")
    back = load_dataset(tmp_path / "d")
    assert back.meta == tiny_dataset.meta
    for k, v in tiny_dataset.arrays.items():
        np.testing.assert_array_equal(back.arrays[k], v)
        assert back.arrays[k].dtype == v.dtype
    assert not list(tmp_path.glob(".d.tmp-*")), "temporary folder left behind"


def test_observation_is_compact(tiny_dataset):
    a = tiny_dataset.arrays
    assert a["agent_pos"].dtype == np.uint8 and a["layout"].dtype == np.uint8
    assert a["agent_pos"].ndim == 1


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda m, a: m.update(version=99), "version 99"),
        (lambda m, a: m.update(format="nope"), "format"),
        (lambda m, a: a.pop("action"), "lacks action"),
        (lambda m, a: a.update(action=a["action"].astype(np.int32)), "'action' has dtype int32"),
        (lambda m, a: a.update(layout=a["layout"][:, :48]), "'layout' has shape"),
        (lambda m, a: a.update(subgoal=a["subgoal"][:-1]), "'subgoal' has shape"),
        (lambda m, a: m.update(obs_kind="pixels"), "obs_kind"),
    ],
)
def test_corrupt_files_are_named(tmp_path, tiny_dataset, corrupt, message):
    meta, arrays = dict(tiny_dataset.meta), dict(tiny_dataset.arrays)
    corrupt(meta, arrays)
    d = tmp_path / "d"
    d.mkdir()
    (d / "meta.json").write_text(json.dumps(meta))
    with open(d / "arrays.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(DatasetError, match=message):
        load_dataset(d)


def test_missing_and_garbage_files(tmp_path, tiny_dataset):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    tiny_dataset.save(tmp_path / "d")
    (tmp_path / "d" / "arrays.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="cannot be read"):
        load_dataset(tmp_path / "d")
    (tmp_path / "d" / "meta.json").write_text("{oops")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset(tmp_path / "d")


def test_batches_cover_every_episode_once_with_little_padding(tiny_dataset, rng):
    batches = bucketed_batches(tiny_dataset.lengths, 512, rng)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(tiny_dataset.n_episodes))
    real = sum(tiny_dataset.lengths[b].sum() for b in batches)
    padded = sum(len(b) * tiny_dataset.lengths[b].max() for b in batches)
    assert real / padded > 0.9


def test_make_batch_aligns_next_observation(tiny_dataset):
    b = make_batch(tiny_dataset, np.array([0, 5]))
    a = tiny_dataset.arrays
    for row, ep in enumerate([0, 5]):
        s, n = tiny_dataset.offsets[ep], tiny_dataset.lengths[ep]
        assert b.mask[row].sum() == n
        np.testing.assert_array_equal(b.obs[row, :n, 49].numpy(), a["agent_pos"][s : s + n])
        np.testing.assert_array_equal(b.obs[row, 0, :49].numpy(), a["layout"][ep])
        np.testing.assert_array_equal(
            b.next_obs[row, : n - 1].numpy(), a["agent_pos"][s + 1 : s + n]
        )
        assert b.next_obs[row, n - 1] == a["final_agent_pos"][ep]


def test_batches_are_gathered_from_tensors_made_once_per_device(tiny_dataset):
    """Issue 30: the dataset becomes tensors once per device (on the CPU without a copy)
    and every batch is gathered there; labels are -1 and everything else 0 on padding."""
    t = tiny_dataset.tensors()
    assert t is tiny_dataset.tensors("cpu")  # made once
    assert np.shares_memory(t["agent_pos"].numpy(), tiny_dataset.arrays["agent_pos"])
    b = make_batch(tiny_dataset, np.array([3, 1, 7]), "cpu")
    n = tiny_dataset.lengths[[3, 1, 7]]
    pad = ~b.mask.bool()
    assert pad.any() and (b.subgoal[pad] == -1).all() and (b.target_colour[pad] == -1).all()
    assert (b.action[pad] == 0).all() and (b.next_obs[pad] == 0).all()
    assert b.obs.dtype == torch.long and b.mask.dtype == torch.float32
    assert b.mask.sum(1).tolist() == n.tolist()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_gathered_on_cuda_equal_the_cpus(tiny_dataset):
    episodes = np.array([3, 1, 7])
    cpu, gpu = make_batch(tiny_dataset, episodes), make_batch(tiny_dataset, episodes, "cuda")
    for name in ("obs", "action", "next_obs", "subgoal", "target_colour", "mask"):
        assert getattr(gpu, name).is_cuda
        assert torch.equal(getattr(gpu, name).cpu(), getattr(cpu, name)), name


def test_subset_keeps_episodes(tiny_dataset):
    sub = tiny_dataset.subset(np.array([4, 2]))
    assert sub.n_episodes == 2
    np.testing.assert_array_equal(sub.arrays["layout"], tiny_dataset.arrays["layout"][[4, 2]])
    s, e = tiny_dataset.offsets[2], tiny_dataset.offsets[3]
    np.testing.assert_array_equal(
        sub.arrays["action"][sub.offsets[1] :], tiny_dataset.arrays["action"][s:e]
    )


def test_fixed_task_and_bad_arguments():
    ds = generate_gridworld(8, "clean", seed=1, task="post", progress=False)
    assert set(ds.tasks()) == {parse_task("post")}
    with pytest.raises(ValueError, match="split"):
        generate_gridworld(8, "train", progress=False)
    with pytest.raises(ValueError, match="clean"):
        generate_gridworld(8, "clean", eps=0.1, progress=False)
