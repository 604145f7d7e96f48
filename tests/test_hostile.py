"""Hostile input against the command line (issue 27): every case ends with exit code 2, one
``error:`` line on stderr naming the problem, no traceback, the user's files untouched and
nothing half-written.

Each case builds its inputs in a fresh folder (the working folder of the command), snapshots
every file there, runs ``irl-lens`` in-process and checks that the snapshot is unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from irl_lens.data.dataset import load_dataset
from tests.cli_helpers import run_cli


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A tiny dataset, a second one with other episodes, and a tiny base run."""
    from irl_lens.cli import main

    root = tmp_path_factory.mktemp("made")
    main(["-q", "data", "gridworld", "--episodes", "60", "--out", str(root / "data")])
    main(
        ["-q", "data", "gridworld", "--episodes", "60", "--seed", "1", "--out", str(root / "other")]
    )
    main(["-q", "pretrain", str(root / "data"), "--out", str(root / "base"), "--preset", "tiny",
          "--steps", "4"])  # fmt: skip
    return {"data": root / "data", "other": root / "other", "base": root / "base"}


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.rglob("*"):
        if f.is_file():
            target = dst / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
    return dst


def _edit_dataset(src: Path, dst: Path, arrays=None, meta=None) -> Path:
    """Copy dataset ``src`` to ``dst``, changing arrays (``fn(dict)``) or meta (``fn(dict)``)."""
    ds = load_dataset(src)
    arrs = {k: v.copy() for k, v in ds.arrays.items()}
    m = dict(ds.meta)
    if arrays:
        arrays(arrs)
    if meta:
        meta(m)
    dst.mkdir(parents=True)
    with open(dst / "arrays.npz", "wb") as f:
        np.savez(f, **arrs)
    (dst / "meta.json").write_text(json.dumps(m))
    return dst


def _set(key, index, value):
    def fn(d):
        d[key][index] = value

    return fn


def _pad_colour(d):
    """Episode 0's task made shorter than its colours: colours sit in the padding."""
    d["task_len"][0] = 2


def _meta(**changes):
    def fn(m):
        for k, v in changes.items():
            if v is _DROP:
                m.pop(k, None)
            else:
                m[k] = v

    return fn


_DROP = object()


def _user_folder(tmp: Path) -> None:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "thesis.tex").write_text("years of work")
    (tmp / "mine" / "sub").mkdir()
    (tmp / "mine" / "sub" / "notes.txt").write_text("more")


def _bad_trainer_state(state) -> Callable[[Path, dict], None]:
    """A copy of the base run as ``run`` whose only checkpoint holds ``state``."""

    def setup(tmp: Path, made: dict) -> None:
        import torch

        run = _copy(made["base"], tmp / "run")
        for ckpt in (run / "checkpoints").iterdir():
            torch.save(state, ckpt / "trainer_state.pt")

    return setup


def _dataset_case(arrays=None, meta=None):
    return lambda tmp, made: _edit_dataset(made["data"], tmp / "bad", arrays, meta)


def _user_metacontroller(tmp: Path, made: dict) -> None:
    """A metacontroller folder saved from a user's own model: no base run to act in."""
    (tmp / "mc").mkdir()
    (tmp / "mc" / "config.json").write_text(
        json.dumps({"kind": "metacontroller", "base_run": None})
    )


def _user_file(tmp: Path, made: dict) -> None:
    (tmp / "file.txt").write_text("a user's file")


PRETRAIN_BAD = ["pretrain", "bad", "--out", "r", "--preset", "tiny", "--steps", "3"]
TINY = ["--preset", "tiny", "--steps", "3"]

# (id, setup(tmp, made) or None, argv ({data} {other} {base} filled in), stderr fragment)
CASES: list[tuple[str, Callable | None, list[str], str]] = [
    # -- output folders: never the working folder, an input, a user's folder or a file
    ("data-out-empty", None, ["data", "gridworld", "--episodes", "5", "--out", ""], "working"),
    ("data-out-dot", None, ["data", "gridworld", "--episodes", "5", "--out", "."], "working"),
    ("data-out-parent", None, ["data", "gridworld", "--episodes", "5", "--out", ".."], "working"),
    ("data-out-user-folder", lambda t, m: _user_folder(t),
     ["data", "gridworld", "--episodes", "5", "--out", "mine"], "did not write"),
    ("data-out-user-folder-overwrite", lambda t, m: _user_folder(t),
     ["data", "gridworld", "--episodes", "5", "--out", "mine", "--overwrite"], "did not write"),
    ("data-out-file", _user_file,
     ["data", "gridworld", "--episodes", "5", "--out", "file.txt"], "is a file"),
    ("data-out-under-file", _user_file,
     ["data", "gridworld", "--episodes", "5", "--out", "file.txt/x"], "under the file"),
    ("data-out-existing-dataset", lambda t, m: _copy(m["data"], t / "d"),
     ["data", "gridworld", "--episodes", "5", "--out", "d"], "--overwrite"),
    ("data-out-is-a-run", lambda t, m: _copy(m["base"], t / "r"),
     ["data", "gridworld", "--episodes", "5", "--out", "r", "--overwrite"], "base_model"),
    ("pretrain-out-is-input", None, ["pretrain", "{data}", "--out", "{data}", *TINY], "overlaps"),
    ("pretrain-out-contains-input", None,
     ["pretrain", "{data}", "--out", "{data}/..", *TINY], "overlaps"),
    ("pretrain-out-user-folder", lambda t, m: _user_folder(t),
     ["pretrain", "{data}", "--out", "mine", *TINY], "did not write"),
    ("pretrain-out-user-folder-overwrite", lambda t, m: _user_folder(t),
     ["pretrain", "{data}", "--out", "mine", "--overwrite", *TINY], "did not write"),
    ("pretrain-out-dataset", lambda t, m: _copy(m["other"], t / "d"),
     ["pretrain", "{data}", "--out", "d", *TINY], "run of kind dataset, not base_model"),
    ("pretrain-out-existing-run", lambda t, m: _copy(m["base"], t / "r"),
     ["pretrain", "{data}", "--out", "r", *TINY], "--resume"),
    ("pretrain-out-file", _user_file, ["pretrain", "{data}", "--out", "file.txt", *TINY],
     "is a file"),
    ("discover-out-user-folder", lambda t, m: _user_folder(t),
     ["discover", "{base}", "--out", "mine", "--data", "{data}", "--preset", "tiny"],
     "did not write"),
    ("controllers-out-user-folder", lambda t, m: _user_folder(t),
     ["controllers", "{base}", "--out", "mine", "--data", "{data}", "--preset", "tiny"],
     "did not write"),
    # -- resume
    ("resume-missing-folder", None, ["pretrain", "{data}", "--out", "nope", *TINY, "--resume"],
     "does not exist"),
    ("resume-other-dataset", lambda t, m: _copy(m["base"], t / "r"),
     ["pretrain", "{other}", "--out", "r", "--preset", "tiny", "--steps", "4", "--resume"],
     "data_sha256"),
    ("resume-other-settings", lambda t, m: _copy(m["base"], t / "r"),
     ["pretrain", "{data}", "--out", "r", "--preset", "tiny", "--steps", "9", "--resume"],
     "train.steps"),
    ("resume-and-overwrite", lambda t, m: _copy(m["base"], t / "r"),
     ["pretrain", "{data}", "--out", "r", *TINY, "--resume", "--overwrite"], "choose one"),
    ("resume-trainer-state-empty-dict", _bad_trainer_state({}),
     ["pretrain", "{data}", "--out", "run", "--preset", "tiny", "--steps", "4", "--resume"],
     "lacks"),
    ("resume-trainer-state-list", _bad_trainer_state([1, 2, 3]),
     ["pretrain", "{data}", "--out", "run", "--preset", "tiny", "--steps", "4", "--resume"],
     "expected a dict"),
    # -- datasets whose values pass the dtype checks but are wrong
    ("data-action-200", _dataset_case(arrays=_set("action", 0, 200)), PRETRAIN_BAD, "'action'"),
    ("data-subgoal-120", _dataset_case(arrays=_set("subgoal", 0, 120)), PRETRAIN_BAD, "subgoal"),
    ("data-task-colour-99", _dataset_case(arrays=_set("task", (0, 0), 99)), PRETRAIN_BAD,
     "colour 99"),
    ("data-target-colour-50", _dataset_case(arrays=_set("target_colour", 3, 50)), PRETRAIN_BAD,
     "target_colour"),
    ("data-task-len-0", _dataset_case(arrays=_set("task_len", 0, 0)), PRETRAIN_BAD, "task_len"),
    ("data-task-padding", _dataset_case(arrays=_pad_colour), PRETRAIN_BAD, "padded"),
    ("data-layout-code-12", _dataset_case(arrays=_set("layout", (0, 0), 12)), PRETRAIN_BAD,
     "layout"),
    ("data-agent-cell-60", _dataset_case(arrays=_set("agent_pos", 0, 60)), PRETRAIN_BAD,
     "agent_pos"),
    ("meta-no-n-actions", _dataset_case(meta=_meta(n_actions=_DROP)), PRETRAIN_BAD,
     "n_actions"),
    ("meta-n-actions-null", _dataset_case(meta=_meta(n_actions=None)), PRETRAIN_BAD,
     "n_actions"),
    ("meta-n-episodes-string", _dataset_case(meta=_meta(n_episodes="60")), PRETRAIN_BAD,
     "n_episodes"),
    ("meta-n-episodes-wrong", _dataset_case(meta=_meta(n_episodes=61)), PRETRAIN_BAD,
     "n_episodes"),
    ("meta-env-unknown", _dataset_case(meta=_meta(env="mars")), PRETRAIN_BAD, "env"),
    ("meta-not-object", lambda t, m: (_copy(m["data"], t / "bad") / "meta.json").write_text("[1]"),
     PRETRAIN_BAD, "JSON object"),
    ("arrays-corrupt", lambda t, m: (_copy(m["data"], t / "bad") / "arrays.npz").write_bytes(b"x"),
     PRETRAIN_BAD, "npz"),
    # -- numbers: finite and within documented bounds
    ("pretrain-lr-inf", None, ["pretrain", "{data}", "--out", "r", *TINY, "--lr", "inf"], "lr"),
    ("pretrain-lr-nan", None, ["pretrain", "{data}", "--out", "r", *TINY, "--lr", "nan"], "lr"),
    ("pretrain-obs-weight-inf", None,
     ["pretrain", "{data}", "--out", "r", *TINY, "--obs-loss-weight", "inf"], "obs_loss_weight"),
    ("pretrain-steps-huge", None,
     ["pretrain", "{data}", "--out", "r", "--preset", "tiny", "--steps", "100000000000"], "steps"),
    ("data-episodes-huge", None,
     ["data", "gridworld", "--episodes", "100000000000000000000000", "--out", "d"], "episodes"),
    ("data-episodes-float", None, ["data", "gridworld", "--episodes", "1e23", "--out", "d"],
     "episodes"),
    # -- tasks
    ("task-trailing-space", None,
     ["data", "gridworld", "--episodes", "5", "--out", "d", "--task", "post "], "spaces"),
    ("task-120-colours", None,
     ["data", "gridworld", "--episodes", "5", "--out", "d", "--task", "-".join(["0", "1"] * 60)],
     "at most"),
    ("task-repeat", None,
     ["data", "gridworld", "--episodes", "5", "--out", "d", "--task", "0-0"], "repeated"),
    ("internal-rl-user-metacontroller", _user_metacontroller,
     ["internal-rl", "mc", "--out", "rl", "--preset", "tiny"], "names no base run"),
    ("internal-rl-missing-folder", None, ["internal-rl", "nope", "--out", "rl", "--preset", "tiny"],
     "does not exist"),
    # -- usage errors are one line too
    ("unknown-option", None, ["data", "gridworld", "--out", "d", "--frobnicate"], "frobnicate"),
    ("bad-preset", None, ["pretrain", "{data}", "--out", "r", "--preset", "huge"], "huge"),
]  # fmt: skip


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("case_id, setup, argv, fragment", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(case_id, setup, argv, fragment, made, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    if setup is not None:
        setup(work, made)
    monkeypatch.chdir(work)
    before = _snapshot(tmp_path)
    argv = [a.format(**{k: str(v) for k, v in made.items()}) for a in argv]
    made_before = _snapshot(made["base"].parent)
    code, _, err = run_cli(["-q", *argv], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(errors) == 1, err
    assert fragment in errors[0], errors[0]
    assert _snapshot(tmp_path) == before, "the command changed or left files"
    assert _snapshot(made["base"].parent) == made_before, "the command changed its inputs"


def test_there_are_at_least_40_hostile_cases():
    assert len(CASES) >= 40


def test_diverging_lr_stops_at_the_first_nonfinite_loss(made, tmp_path, capsys):
    """``--lr 1e30`` trains into NaN: exit 2 naming the step, no NaN weights on disk."""
    from safetensors.numpy import load_file

    out = tmp_path / "r"
    code, _, err = run_cli(
        ["-q", "pretrain", str(made["data"]), "--out", str(out), "--preset", "tiny",
         "--steps", "40", "--lr", "1e30"], capsys,
    )  # fmt: skip
    assert code == 2 and ("not finite" in err or "is nan" in err), err
    assert "at step" in err
    assert not (out / "model.safetensors").exists()
    for ckpt in (out / "checkpoints").glob("step_*"):
        for v in load_file(ckpt / "model.safetensors").values():
            assert np.isfinite(v).all()


def test_discovery_that_diverges_stops_naming_the_step_and_saves_no_nan(made, tmp_path):
    """The non-finite check reads the loss at log steps only (no sync per step), and still
    names the first bad step and never writes NaN weights."""
    import dataclasses

    from safetensors.numpy import load_file

    from irl_lens import presets, runs
    from irl_lens.data.dataset import load_dataset
    from irl_lens.train.discover import discover

    cfg = dataclasses.replace(presets.get("tiny").discover, lr=1e30, steps=12)
    out = tmp_path / "mc"
    with pytest.raises(runs.NonFiniteError, match=r"discover: the loss is .* at step \d+"):
        discover(made["base"], load_dataset(made["data"]), out, cfg, progress=False)
    assert not (out / "metacontroller.safetensors").exists()
    for ckpt in (out / "checkpoints").glob("step_*"):
        for v in load_file(ckpt / "model.safetensors").values():
            assert np.isfinite(v).all()


def test_summary_is_strict_json_and_names_what_is_missing(made, tmp_path, capsys):
    """A one-episode dataset leaves held-out metrics uncomputable: ``null``, never ``NaN``."""
    one = tmp_path / "one"
    code, _, err = run_cli(
        ["-q", "data", "gridworld", "--episodes", "1", "--out", str(one)], capsys
    )
    assert code == 0, err
    out = tmp_path / "r"
    code, printed, err = run_cli(
        ["-q", "pretrain", str(one), "--out", str(out), "--preset", "tiny", "--steps", "2"], capsys
    )
    assert code == 0, err
    text = (out / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    assert None in summary.values()
    assert "n/a (" in printed and "nan" not in printed.lower().replace("n/a", "")


def test_overwrite_replaces_only_our_dataset_once_complete(made, tmp_path, capsys):
    d = _copy(made["data"], tmp_path / "d")
    code, _, err = run_cli(
        ["-q", "data", "gridworld", "--episodes", "7", "--out", str(d), "--overwrite"], capsys
    )
    assert code == 0, err
    assert load_dataset(d).n_episodes == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temp folder left


def test_metacontroller_folder_works_from_any_working_folder(made, tmp_path, capsys, monkeypatch):
    """``base_run`` is stored relative to the run (and absolute) and checked by hash."""
    from irl_lens.train.discover import load_metacontroller

    monkeypatch.chdir(made["base"].parent)
    code, _, err = run_cli(
        ["-q", "discover", "base", "--out", str(tmp_path / "mc"), "--data", "data",
         "--preset", "tiny", "--steps", "2", "--episodes", "4"], capsys,
    )  # fmt: skip
    assert code == 0, err
    monkeypatch.chdir(tmp_path)
    load_metacontroller(tmp_path / "mc")  # "base" alone would not resolve from here
    cfg = json.loads((tmp_path / "mc" / "config.json").read_text())
    assert Path(cfg["base_run_ref"]["absolute"]) == made["base"].resolve()
    # another base model in the same place: refused by its hash
    moved = _copy(made["base"], tmp_path / "b2")
    weights = moved / "model.safetensors"
    cfg["base_run_ref"] = {"relative": "../b2", "absolute": str(moved), "sha256": "0" * 64}
    (tmp_path / "mc" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="changed"):
        load_metacontroller(tmp_path / "mc")
    assert weights.is_file()
