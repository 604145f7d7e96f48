"""The Streamlit dashboard on a tiny runs folder built through the CLI (AppTest, no browser).

The app browses only the runs root named by ``IRL_LENS_RUNS``: the ``app`` fixture points it
at the folder each test looks at.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

APP = str(Path(__file__).resolve().parents[1] / "apps" / "controllers.py")


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """base (probe, controllers), metacontroller (analysed), RL runs, a sweep: all tiny."""
    from irl_lens.cli import main

    root = tmp_path_factory.mktemp("dash")
    q = root / "q"
    main(["data", "gridworld", "--episodes", "300", "--out", str(q / "data")])
    main(["data", "gridworld", "--split", "clean", "--episodes", "120", "--out", str(q / "clean")])
    main(["pretrain", str(q / "data"), "--out", str(q / "base"), "--preset", "tiny"])
    main(["probe", str(q / "base"), "--data", str(q / "clean"), "--episodes", "100"])
    main(["controllers", str(q / "base"), "--data", str(q / "clean"), "--preset", "tiny",
          "--episodes", "20", "--layers", "0,1"])  # fmt: skip
    main(["discover", str(q / "base"), "--out", str(q / "mc"), "--data", str(q / "clean"),
          "--preset", "tiny", "--episodes", "20", "--task", "0-1-2-3"])  # fmt: skip
    main(["commit", str(q / "mc"), "--out", str(q / "mc-commit"), "--data", str(q / "clean"),
          "--preset", "tiny"])  # fmt: skip
    for seed in (0, 1):
        main(["internal-rl", str(q / "mc"), "--out", str(q / f"rl-s{seed}"), "--preset", "tiny",
              "--task", "0-1-2-3", "--seed", str(seed)])  # fmt: skip
    main(["raw-rl", str(q / "base"), "--out", str(q / "raw-s0"), "--preset", "tiny",
          "--task", "0-1-2-3"])  # fmt: skip
    main(["sweep", "rate-distortion", str(q / "base"), "--out", str(q / "rd"), "--alphas", "0.1",
          "--seeds", "1", "--variants", "full", "--preset", "tiny", "--data", str(q / "clean"),
          "--episodes", "8", "--workers", "1"])  # fmt: skip
    return root


@pytest.fixture()
def app(monkeypatch):
    """``app(root, page, typed=root)``: the dashboard serving ``root``, ``typed`` in its box.

    The variable stays set for the whole test: every widget change re-runs the script.
    """

    def open_app(root, page: str, typed: str | None = None):
        from streamlit.testing.v1 import AppTest

        monkeypatch.setenv("IRL_LENS_RUNS", str(root))
        at = AppTest.from_file(APP, default_timeout=120)
        at.run()
        at.sidebar.text_input(key="root").set_value(str(root) if typed is None else typed).run()
        at.sidebar.radio(key="page").set_value(page).run()
        assert not at.exception, at.exception
        return at

    return open_app


def _charts(at) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def _values(arr) -> list:
    """A trace's x or y: a list, or plotly's typed array ``{"dtype", "bdata"}`` decoded."""
    if isinstance(arr, dict) and "bdata" in arr:
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(arr["bdata"]), dtype=arr["dtype"]).tolist()
    return list(arr or [])


def test_runs_page_lists_runs_and_explains_an_empty_folder(app, runs_root, tmp_path):
    at = app(runs_root, "Runs")
    table = at.dataframe[0].value
    assert {"base_model", "metacontroller", "internal_rl", "probe"} <= set(table["kind"])
    empty = app(tmp_path, "Runs")
    assert any("holds no runs" in w.value for w in empty.warning)


def test_runs_page_shows_a_reproduction_report_with_its_links_as_paths(app, runs_root, tmp_path):
    import shutil

    shutil.copytree(runs_root / "q" / "base", tmp_path / "demo" / "base")
    (tmp_path / "demo" / "report.md").write_text(
        "# irl_lens reproduction report\n\n| claim | met | figure |\n| --- | --- | --- |\n"
        "| probes rise | no | [base/probe/probe_accuracy.html](base/probe/probe_accuracy.html) |\n"
    )
    at = app(tmp_path, "Runs")
    assert at.expander[0].label.endswith("demo/report.md")
    text = " ".join(m.value for m in at.markdown)
    assert "| probes rise | no | `base/probe/probe_accuracy.html` |" in text


@pytest.mark.parametrize(
    "page, n_charts",
    [("Probes", 3), ("Controllability", 1), ("Switching", 1), ("Controllers", 3),
     ("Codes that command", 1), ("Rate-distortion", 1), ("Internal RL", 3)],
)  # fmt: skip
def test_every_page_renders_its_figures_with_data(app, runs_root, page, n_charts):
    at = app(runs_root, page)
    charts = _charts(at)
    assert len(charts) >= n_charts, page
    for spec in charts:
        assert spec["data"], f"{page}: a chart without traces"
        has_points = any(
            any(v is not None for v in _values(tr.get("y") or tr.get("x"))) for tr in spec["data"]
        )
        assert has_points or spec["layout"].get("shapes"), f"{page}: an empty chart"


def test_the_rate_distortion_page_tables_each_alpha(app, runs_root):
    table = app(runs_root, "Rate-distortion").dataframe[0].value
    assert {"variant", "alpha", "n_seeds", "rate", "distortion", "aligned"} <= set(table.columns)
    assert list(table["alpha"]) == [0.1]


def test_widgets_change_what_is_shown(app, runs_root):
    at = app(runs_root, "Switching")
    before = len(_charts(at)[0]["data"])
    at.multiselect(key="sw_eps").set_value([0]).run()
    assert len(_charts(at)[0]["data"]) < before  # fewer episodes, fewer traces
    at = app(runs_root, "Internal RL")
    assert _charts(at)[0]["layout"]["xaxis"].get("type") == "linear"
    at.toggle(key="rl_log").set_value(True).run()
    assert _charts(at)[0]["layout"]["xaxis"]["type"] == "log"


def test_a_missing_result_gives_the_command_that_makes_it(app, tmp_path):
    from irl_lens.cli import main

    main(["data", "gridworld", "--episodes", "100", "--out", str(tmp_path / "d")])
    main(["pretrain", str(tmp_path / "d"), "--out", str(tmp_path / "base"), "--preset", "tiny"])
    at = app(tmp_path, "Probes")
    assert any("irl-lens probe" in i.value for i in at.info)


def test_controllers_page_shows_what_the_codes_predict(app, runs_root):
    at = app(runs_root, "Controllers")
    metrics = {m.label: m.value for m in at.metric}
    assert {"NMI", "code -> subgoal (linear)", "code -> target cell R2",
            "code -> previous subgoal"} <= set(metrics)  # fmt: skip
    summary = json.loads((runs_root / "q" / "mc" / "summary.json").read_text())
    assert metrics["code -> target cell R2"] == _shown(summary["clustering/target_cell_r2"])
    assert metrics["code -> previous subgoal"] == _shown(summary["clustering/previous_accuracy"])


def _shown(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "not computed"


# ------------------------------------------------------------ the runs root is a boundary


def _fake_run(folder: Path, kind: str) -> Path:
    """A folder the Runs page lists: a ``config.json`` and a ``summary.json``."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"kind": kind}))
    (folder / "summary.json").write_text(json.dumps({f"{kind}/x": 1.0}))
    return folder


def _shows_nothing(at) -> None:
    assert not at.dataframe and not at.expander and not at.warning and not at.json


@pytest.mark.parametrize("typed", ["/", "../..", "{root}/..", "~"])
def test_a_path_outside_the_runs_root_is_refused_and_lists_nothing(app, tmp_path, typed):
    root = tmp_path / "runs"
    _fake_run(root / "base", "base_model")
    _fake_run(tmp_path / "private", "secret")
    at = app(root, "Runs", typed=typed.format(root=root))
    assert len(at.error) == 1 and str(root.resolve()) in at.error[0].value
    _shows_nothing(at)


def test_a_symlink_out_of_the_runs_root_is_refused_and_not_followed(app, tmp_path):
    root = tmp_path / "runs"
    _fake_run(root / "base", "base_model")
    secret = _fake_run(tmp_path / "private", "secret")
    (secret / "report.md").write_text("# private report")
    (root / "link").symlink_to(secret, target_is_directory=True)
    _fake_run(root / "files", "base_model").joinpath("config.json").unlink()
    (root / "files" / "config.json").symlink_to(secret / "config.json")
    at = app(root, "Runs", typed=str(root / "link"))
    assert len(at.error) == 1 and str(root.resolve()) in at.error[0].value
    _shows_nothing(at)
    at = app(root, "Runs")  # the root itself: its symlinks out of it are skipped
    assert not at.error and not at.expander
    assert set(at.dataframe[0].value["kind"]) == {"base_model"}


def test_a_subfolder_of_the_runs_root_can_be_browsed(app, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    _fake_run(root / "a" / "base", "base_model")
    _fake_run(root / "b" / "base", "internal_rl")
    at = app(root, "Runs", typed=str(root / "a"))
    assert not at.error and set(at.dataframe[0].value["kind"]) == {"base_model"}
    monkeypatch.chdir(root)  # a relative path reads from the working folder, as in a shell
    at = app(root, "Runs", typed="b")
    assert not at.error and set(at.dataframe[0].value["kind"]) == {"internal_rl"}


# ------------------------------------------------------- what the metacontroller pages open


def _mc_copy(runs_root: Path, folder: Path, variant: str) -> Path:
    """The fixture's analysed metacontroller copied to ``folder`` as a ``variant`` run."""
    shutil.copytree(runs_root / "q" / "mc", folder)
    config = json.loads((folder / "config.json").read_text())
    config["train"]["variant"] = variant
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_the_main_metacontroller_opens_first(app, runs_root, tmp_path):
    demo = tmp_path / "demo"
    for name, variant in (("mc-beta1", "beta1"), ("mc-cotrain", "cotrain"), ("mc-full", "full")):
        _mc_copy(runs_root, demo / name, variant)
    _mc_copy(runs_root, demo / "aa-other", "full")  # full too, but not the main one's name
    at = app(tmp_path, "Switching")
    assert Path(at.selectbox(key="mc_pick").value).name == "mc-full"
    shutil.rmtree(demo / "mc-full")
    at = app(tmp_path, "Switching")  # no main one: any full run before the baselines
    assert Path(at.selectbox(key="mc_pick").value).name == "aa-other"
    shutil.rmtree(demo / "aa-other")
    at = app(tmp_path, "Switching")  # no full run: the first
    assert Path(at.selectbox(key="mc_pick").value).name == "mc-beta1"


def test_a_number_not_computed_says_so_and_how_to_compute_it(app, runs_root, tmp_path):
    mc = _mc_copy(runs_root, tmp_path / "mc", "full")
    analysis = json.loads((mc / "analysis.json").read_text())
    analysis["steering"] |= {"task_success": math.nan, "task_base_success": math.nan}
    (mc / "analysis.json").write_text(json.dumps(analysis))
    summary = json.loads((mc / "summary.json").read_text())
    summary["clustering/previous_accuracy"] = math.nan
    (mc / "summary.json").write_text(json.dumps(summary))
    at = app(tmp_path, "Controllers")
    titles = [(c["layout"].get("title") or {}).get("text", "") for c in _charts(at)]
    steering = next(t for t in titles if t.startswith("Steering"))
    assert "not computed" in steering and "irl-lens discover" in steering, steering
    assert not any("nan" in t for t in titles), titles
    metric = next(m for m in at.metric if m.label == "code -> previous subgoal")
    assert metric.value == "not computed" and "irl-lens discover" in metric.help


def test_the_internal_rl_page_compares_one_task_at_a_time(app, runs_root, tmp_path):
    root = tmp_path / "two-tasks"
    shutil.copytree(runs_root, root)
    seen = root / "q" / "rl-seen"
    shutil.copytree(root / "q" / "rl-s1", seen)
    config = json.loads((seen / "config.json").read_text())
    (seen / "config.json").write_text(json.dumps(config | {"task": "0-1-4-5"}))
    at = app(root, "Internal RL")
    assert at.selectbox(key="rl_task").options == ["0-1-2-3", "0-1-4-5"]
    assert str(seen) not in at.multiselect(key="rl_runs").options
    at.selectbox(key="rl_task").set_value("0-1-4-5").run()
    assert not at.exception and at.multiselect(key="rl_runs").options == [str(seen)]
