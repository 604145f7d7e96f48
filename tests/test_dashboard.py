"""The Streamlit dashboard on a tiny runs folder built through the CLI (AppTest, no browser)."""

from __future__ import annotations

import json
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
    for seed in (0, 1):
        main(["internal-rl", str(q / "mc"), "--out", str(q / f"rl-s{seed}"), "--preset", "tiny",
              "--task", "0-1-2-3", "--seed", str(seed)])  # fmt: skip
    main(["raw-rl", str(q / "base"), "--out", str(q / "raw-s0"), "--preset", "tiny",
          "--task", "0-1-2-3"])  # fmt: skip
    main(["sweep", "rate-distortion", str(q / "base"), "--out", str(q / "rd"), "--alphas", "0.1",
          "--seeds", "1", "--variants", "full", "--preset", "tiny", "--data", str(q / "clean"),
          "--episodes", "8", "--workers", "1"])  # fmt: skip
    return root


def _app(root, page: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.sidebar.text_input(key="root").set_value(str(root)).run()
    at.sidebar.radio(key="page").set_value(page).run()
    assert not at.exception, at.exception
    return at


def _charts(at) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def _values(arr) -> list:
    """A trace's x or y: a list, or plotly's typed array ``{"dtype", "bdata"}`` decoded."""
    if isinstance(arr, dict) and "bdata" in arr:
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(arr["bdata"]), dtype=arr["dtype"]).tolist()
    return list(arr or [])


def test_runs_page_lists_runs_and_explains_an_empty_folder(runs_root, tmp_path):
    at = _app(runs_root, "Runs")
    table = at.dataframe[0].value
    assert {"base_model", "metacontroller", "internal_rl", "probe"} <= set(table["kind"])
    empty = _app(tmp_path, "Runs")
    assert any("holds no runs" in w.value for w in empty.warning)


def test_runs_page_shows_a_reproduction_report_with_its_links_as_paths(runs_root, tmp_path):
    import shutil

    shutil.copytree(runs_root / "q" / "base", tmp_path / "demo" / "base")
    (tmp_path / "demo" / "report.md").write_text(
        "# irl_lens reproduction report\n\n| claim | met | figure |\n| --- | --- | --- |\n"
        "| probes rise | no | [base/probe/probe_accuracy.html](base/probe/probe_accuracy.html) |\n"
    )
    at = _app(tmp_path, "Runs")
    assert at.expander[0].label.endswith("demo/report.md")
    text = " ".join(m.value for m in at.markdown)
    assert "| probes rise | no | `base/probe/probe_accuracy.html` |" in text


@pytest.mark.parametrize(
    "page, n_charts",
    [("Probes", 3), ("Controllability", 1), ("Switching", 1), ("Controllers", 3),
     ("Rate-distortion", 1), ("Internal RL", 3)],
)  # fmt: skip
def test_every_page_renders_its_figures_with_data(runs_root, page, n_charts):
    at = _app(runs_root, page)
    charts = _charts(at)
    assert len(charts) >= n_charts, page
    for spec in charts:
        assert spec["data"], f"{page}: a chart without traces"
        has_points = any(
            any(v is not None for v in _values(tr.get("y") or tr.get("x"))) for tr in spec["data"]
        )
        assert has_points or spec["layout"].get("shapes"), f"{page}: an empty chart"


def test_the_rate_distortion_page_tables_each_alpha(runs_root):
    table = _app(runs_root, "Rate-distortion").dataframe[0].value
    assert {"variant", "alpha", "n_seeds", "rate", "distortion", "aligned"} <= set(table.columns)
    assert list(table["alpha"]) == [0.1]


def test_widgets_change_what_is_shown(runs_root):
    at = _app(runs_root, "Switching")
    before = len(_charts(at)[0]["data"])
    at.multiselect(key="sw_eps").set_value([0]).run()
    assert len(_charts(at)[0]["data"]) < before  # fewer episodes, fewer traces
    at = _app(runs_root, "Internal RL")
    assert _charts(at)[0]["layout"]["xaxis"].get("type") == "linear"
    at.toggle(key="rl_log").set_value(True).run()
    assert _charts(at)[0]["layout"]["xaxis"]["type"] == "log"


def test_a_missing_result_gives_the_command_that_makes_it(tmp_path):
    from irl_lens.cli import main

    main(["data", "gridworld", "--episodes", "100", "--out", str(tmp_path / "d")])
    main(["pretrain", str(tmp_path / "d"), "--out", str(tmp_path / "base"), "--preset", "tiny"])
    at = _app(tmp_path, "Probes")
    assert any("irl-lens probe" in i.value for i in at.info)


def test_controllers_page_shows_what_the_codes_predict(runs_root):
    at = _app(runs_root, "Controllers")
    metrics = {m.label: m.value for m in at.metric}
    assert {"NMI", "code -> subgoal (linear)", "code -> target cell R2",
            "code -> previous subgoal"} <= set(metrics)  # fmt: skip
    summary = json.loads((runs_root / "q" / "mc" / "summary.json").read_text())
    assert metrics["code -> target cell R2"] == f"{summary['clustering/target_cell_r2']:.2f}"
    assert metrics["code -> previous subgoal"] == f"{summary['clustering/previous_accuracy']:.2f}"
