"""`irl-lens reproduce` on the tiny preset: every stage runs, the report compares, reruns skip."""

from __future__ import annotations

import io
import json

import pytest
from tqdm import tqdm

from irl_lens.cli import main

ARGS = ["--preset", "tiny", "--pretrain-episodes", "300", "--clean-episodes", "150",
        "--rl-seeds", "2", "--workers", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro") / "r"
    main(["reproduce", "gridworld", "--out", str(out), *ARGS])
    return out


def test_every_stage_writes_its_outputs_and_the_report(repro, capsys):
    for path in ("data/meta.json", "base/model.safetensors", "base/probe/summary.json",
                 "base/controllers/summary.json", "mc-full/analysis.json",
                 "mc-beta1/summary.json", "mc-cotrain/summary.json", "rl-full-s1/summary.json",
                 "rl-raw-s0/summary.json", "compare/success_log.html"):  # fmt: skip
        assert (repro / path).is_file(), path
    mc_data = json.loads((repro / "mc-full" / "config.json").read_text())["data"]
    assert json.loads((repro / "data-discovery" / "meta.json").read_text())["tie_break"] == "first"
    assert mc_data.endswith("data-discovery")  # discovery trains on the deterministic expert
    report = (repro / "report.md").read_text()
    assert "| claim (paper) | paper | ours | figure |" in report
    assert "Internal RL solves the post task" in report and "internal_rl" in report
    stages = json.loads((repro / "stages.json").read_text())
    assert set(stages) == {"data", "base", "read", "discover", "rl"}


def test_a_rerun_skips_finished_stages_and_gives_the_same_numbers(repro):
    before = json.loads((repro / "summary.json").read_text())
    mtime = (repro / "base" / "model.safetensors").stat().st_mtime
    (repro / "rl-beta1-s0" / "summary.json").unlink()  # as if interrupted in the last stage
    main(["reproduce", "gridworld", "--out", str(repro), *ARGS])
    assert (repro / "base" / "model.safetensors").stat().st_mtime == mtime  # not redone
    after = json.loads((repro / "summary.json").read_text())
    assert after == before


def test_quick_discovery_runs_at_layer_1_with_the_gumbel_switch_on_deterministic_data(tmp_path):
    from irl_lens.reproduce import ReproduceSettings, stages

    by_name = {s.name: s for s in stages(tmp_path, ReproduceSettings(with_sweep=True))}
    for job in [*by_name["discover"].jobs, *by_name["sweep"].jobs]:
        args = job.args
        assert args[args.index("--layer") + 1] == "1", args
        assert args[args.index("--switch") + 1] == "gumbel", args
        assert args[args.index("--data") + 1] == str(tmp_path / "data-discovery"), args
    tiny = {s.name: s for s in stages(tmp_path, ReproduceSettings(preset="tiny"))}
    assert all("--switch" not in j.args for j in tiny["discover"].jobs)  # other presets: L/2


def test_job_progress_reads_the_bar_now_moving_in_a_jobs_log(tmp_path):
    from irl_lens.sweep import job_progress

    log = tmp_path / "job.log"
    assert job_progress(log) == ""  # not started
    log.write_text("INFO start\n")
    assert job_progress(log) == ""  # no bar yet
    log.write_text("train layer 0: 100%|##########| 10/10 [00:01<00:00]\n"
                   "evaluate:   7%|7         | 7/100 [00:01<00:10]\r"
                   "evaluate:  45%|####5     | 45/100 [00:02<00:03, nll=0.3]\r")  # fmt: skip
    assert job_progress(log) == "evaluate 45%"


def test_the_runner_shows_each_running_jobs_progress(tmp_path):
    from irl_lens.sweep import Job, LocalRunner

    runner = LocalRunner(2)
    assert runner.running_progress() == ""
    (tmp_path / "mc-full.log").write_text("discover:  12%|#  | 240/2000\r")
    runner._running = {"mc-full": tmp_path / "mc-full.log", "base": tmp_path / "base.log"}
    assert runner.running_progress() == "mc-full: discover 12% | base: starting"
    # a finished job is skipped without a process; an outer bar is advanced, not closed
    runner._running = {}
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "summary.json").write_text("{}")
    bar = tqdm(total=1, file=io.StringIO())
    (res,) = runner.run([Job(["probe", "x"], tmp_path / "done")], bar=bar)
    assert res.skipped and bar.n == 1 and runner.running_progress() == ""
