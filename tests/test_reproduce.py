"""`irl-lens reproduce` on the tiny preset: every stage runs, the report compares, reruns skip."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

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
                 "mc-beta1/summary.json", "mc-cotrain/summary.json",
                 "rl-full-commit-s1/summary.json",
                 "rl-raw-s0/summary.json", "rl-raw-s1/summary.json",
                 "compare/success_log.html",
                 "mc-full-commit/summary.json", "mc-cotrain-commit/summary.json",
                 "compile/summary.json", "rl-compile-s0/summary.json",
                 "rl-compile-s1/summary.json", "rl-full-commit-seen-s1/summary.json",
                 "rl-compile-seen-s1/summary.json", "compare-seen/summary.json"):  # fmt: skip
        assert (repro / path).is_file(), path
    # the CompILE baseline (issue 31): on the discovery data, its RL in the comparison
    assert json.loads((repro / "compile" / "config.json").read_text())["data"].endswith(
        "data-discovery"
    )
    compared = json.loads((repro / "compare" / "summary.json").read_text())
    assert "compare/internal_rl (compile)/final_success" in compared
    # raw-action RL runs seed for seed with internal RL on full (--rl-seeds 2)
    assert [json.loads((repro / f"rl-raw-s{k}" / "config.json").read_text())["train"]["seed"]
            for k in (0, 1)] == [0, 1]  # fmt: skip
    # the seen-transition control (issue 31): both abstractions, compared apart from post
    seen = json.loads((repro / "compare-seen" / "summary.json").read_text())
    assert set(seen) == {f"compare/{m}/{k}" for m in ("internal_rl", "internal_rl (compile)")
                         for k in ("final_success", "episodes_to_0.5")}  # fmt: skip
    for rl_run in ("rl-full-commit-seen-s0", "rl-compile-seen-s1"):
        assert json.loads((repro / rl_run / "config.json").read_text())["task"] == (
            "0-1-4-5-2-3-6-7-4-5-0-1"
        )
    # the tiny preset commits (as quick does): RL and its baselines run on the refits
    for rl_run, mc in (("rl-full-commit-s1", "mc-full-commit"),
                       ("rl-beta1-commit-s0", "mc-beta1-commit"),
                       ("rl-cotrain-commit-s0", "mc-cotrain-commit")):  # fmt: skip
        assert json.loads((repro / rl_run / "config.json").read_text())["metacontroller"].endswith(
            mc
        )
    mc_data = json.loads((repro / "mc-full" / "config.json").read_text())["data"]
    assert json.loads((repro / "data-discovery" / "meta.json").read_text())["tie_break"] == "first"
    assert mc_data.endswith("data-discovery")  # discovery trains on the deterministic expert
    report = (repro / "report.md").read_text()
    assert "| claim (paper) | paper | target | ours | met | figure |" in report
    assert "- base: `irl-lens pretrain" in report
    assert "Internal RL solves the post task" in report and "internal_rl" in report
    timing = json.loads((repro / "timing.json").read_text())
    assert timing["total"] > 0 and {"base", "base/probe", "mc-cotrain", "rl-raw-s0"} <= set(
        timing["jobs"]
    )
    assert "| rl | rl-raw-s0 |" in report
    assert "CompILE baseline: segments and latents inferred from the raw inputs" in report
    assert "internal_rl (compile)" in report and "| discover | compile |" in report
    assert "Internal RL on a task of seen subgoal transitions" in report


def test_the_report_tables_a_rate_distortion_sweep_when_there_is_one(repro, tmp_path):
    from irl_lens.cli.report import _sweep_section

    assert "## Rate-distortion" not in (repro / "report.md").read_text()  # no --with-sweep
    for variant in ("full", "cotrain"):  # two finished sweep runs, as the sweep lays them out
        shutil.copytree(repro / f"mc-{variant}", tmp_path / "rd" / f"{variant}-a0.1-s0")
    text = "\n".join(_sweep_section(tmp_path))
    assert "## Rate-distortion (paper Fig 7)" in text and "rd/rate_distortion.html" in text
    assert "| frozen base | 0.1 | 1 |" in text and "| cotrain | 0.1 | 1 |" in text


def test_a_rerun_skips_finished_stages_and_gives_the_same_numbers(repro):
    before = json.loads((repro / "summary.json").read_text())
    mtime = (repro / "base" / "model.safetensors").stat().st_mtime
    # as if interrupted: one RL run after a checkpoint, one before its first, controllers
    # part-way (each of these commands refuses to write into a non-empty folder by itself)
    (repro / "rl-beta1-commit-s0" / "summary.json").unlink()
    (repro / "rl-cotrain-commit-s0" / "summary.json").unlink()
    shutil.rmtree(repro / "rl-cotrain-commit-s0" / "checkpoints")
    (repro / "base" / "controllers" / "summary.json").unlink()
    main(["reproduce", "gridworld", "--out", str(repro), *ARGS])
    assert (repro / "base" / "model.safetensors").stat().st_mtime == mtime  # not redone
    after = json.loads((repro / "summary.json").read_text())
    assert _numbers(after) == _numbers(before)


def test_a_job_resumes_or_clears_only_what_an_interrupted_run_of_ours_left(tmp_path):
    from irl_lens.cli.sweep import Job

    def job(name, leftover, checkpoint=False, ours=True):
        out = tmp_path / name
        (out / "checkpoints").mkdir(parents=True)
        if ours:
            (out / "config.json").write_text(json.dumps({"kind": "metacontroller"}))
        if checkpoint:
            (out / "checkpoints" / "step_00000020").mkdir()
        return Job(["discover", "x", "--out", str(out)], out, leftover=leftover)

    resumed = job("a", "resume", checkpoint=True)
    assert resumed.command()[-1] == "--resume" and resumed.out.exists()
    # no complete checkpoint (a torn .tmp-* at most): --resume starts over at step 0 in place
    torn = job("b", "resume")
    (torn.out / "checkpoints" / ".tmp-x").mkdir()
    assert torn.command()[-1] == "--resume"
    cleared = job("c", "clear", checkpoint=True)
    assert "--resume" not in cleared.command() and not cleared.out.exists()
    for leftover in ("clear", "resume"):  # a folder irl-lens did not write is never removed
        users = job(f"user-{leftover}", leftover, ours=False)
        assert users.command() == users.args and users.out.exists()
    kept = job("d", "keep", checkpoint=True)
    assert kept.command() == kept.args and kept.out.exists()
    with pytest.raises(ValueError, match="leftover"):
        Job([], tmp_path, leftover="delete")


def _numbers(summary: dict) -> dict:
    """The results, without wall-clock and throughput (which vary run to run)."""
    timing = ("seconds", "per_s", "tok_s", "tokens_per_s")
    return {k: v for k, v in summary.items() if not any(t in k for t in timing)}


@pytest.mark.slow  # a second whole reproduction (~2 min); the rerun test below checks resumes
def test_a_second_reproduction_with_the_same_seed_gives_the_same_numbers(repro, tmp_path):
    again = tmp_path / "again"
    main(["reproduce", "gridworld", "--out", str(again), *ARGS])
    first, second = (_numbers(json.loads((d / "summary.json").read_text()))
                     for d in (repro, again))  # fmt: skip
    assert second == first
    assert first["mc:switching/f1_tol1"] == first["mc:switching/f1_tol1"]  # not nan: compared


def test_quick_discovery_runs_at_layer_1_with_the_gumbel_switch_on_deterministic_data(tmp_path):
    from irl_lens.cli.reproduce import ReproduceSettings, stages

    by_name = {s.name: s for s in stages(tmp_path, ReproduceSettings(with_sweep=True))}
    for job in [*by_name["discover"].jobs, *by_name["sweep"].jobs]:
        args = job.args
        assert args[args.index("--layer") + 1] == "1", args
        assert args[args.index("--data") + 1] == str(tmp_path / "data-discovery"), args
        if args[0] != "compile":  # CompILE has its own segmentation, no switching unit
            assert args[args.index("--switch") + 1] == "gumbel", args
    tiny = {s.name: s for s in stages(tmp_path, ReproduceSettings(preset="tiny"))}
    assert all("--switch" not in j.args for j in tiny["discover"].jobs)  # other presets: L/2


def test_job_progress_reads_the_bar_now_moving_in_a_jobs_log(tmp_path):
    from irl_lens.cli.sweep import job_progress

    log = tmp_path / "job.log"
    assert job_progress(log) == ""  # not started
    log.write_text("INFO start\n")
    assert job_progress(log) == ""  # no bar yet
    log.write_text("train layer 0: 100%|##########| 10/10 [00:01<00:00]\n"
                   "evaluate:   7%|7         | 7/100 [00:01<00:10]\r"
                   "evaluate:  45%|####5     | 45/100 [00:02<00:03, nll=0.3]\r")  # fmt: skip
    assert job_progress(log) == "evaluate 45%"


def test_the_runner_shows_each_running_jobs_progress(tmp_path):
    from irl_lens.cli.sweep import Job, LocalRunner

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


def test_each_claim_is_judged_against_the_issue_targets():
    from irl_lens.cli.report import claims

    good = {"probe:probe/accuracy_layer_0": 0.3, "probe:probe/best_accuracy": 0.6,
            "controllers:controllers/best_success": 0.5, "controllers:controllers/best_layer": 2,
            "controllers:controllers/base_success": 0.0, "mc:switching/f1_tol1": 0.95,
            "mc:switching/binary_fraction": 0.9, "mc:clustering/nmi": 0.85,
            "mc:steering/mean_steered": 0.6, "mc:steering/mean_uncontrolled": 0.2,
            "compare:compare/internal_rl/final_success": 0.7,
            "compare:compare/raw_rl/final_success": 0.0,
            "compare:compare/internal_rl_beta1/final_success": 0.05,
            "compare:compare/internal_rl (cotrain)/final_success": 0.0}  # fmt: skip
    assert [c.met for c in claims(good, n_layers=4)] == ["yes"] * 5
    # the distortion is read against the base alone on the same held-out episodes
    nll = {"mc:discover/action_nll": -4.07, "mc:discover/base_action_nll": -4.304}
    assert (
        "held-out action NLL -4.070 (the base alone -4.304)"
        in claims(good | nll, n_layers=4)[2].ours
    )
    bad = good | {"probe:probe/best_accuracy": 0.44,  # under layer 0 + 0.15
                  "controllers:controllers/best_layer": 1,  # below the middle third of 0..4
                  "mc:switching/binary_fraction": 0.2,
                  "mc:steering/mean_steered": 0.25,  # not clearly above 0.2
                  "compare:compare/raw_rl/final_success": 0.02}  # fmt: skip
    assert [c.met for c in claims(bad, n_layers=4)] == ["no"] * 5
    missing = claims({}, n_layers=None)
    assert [c.met for c in missing] == ["n/a"] * 5 and "n/a" in missing[0].ours
    # with a commitment refit (issue 29) its row joins, before Fig 8's
    committed = claims(good | {"commit:compose/success": 0.62}, n_layers=4)
    assert [c.met for c in committed] == ["yes"] * 6 and "0.620" in committed[4].ours
    assert claims(good | {"commit:compose/success": 0.5}, n_layers=4)[4].met == "no"
    # the CompILE baseline (issue 31): its row is reported without a bar of its own, and its
    # RL joins Fig 8's bars
    with_compile = good | {"compile:switching/f1_tol1": 0.316, "compile:clustering/nmi": 0.003,
                           "compare:compare/internal_rl (compile)/final_success": 0.0}  # fmt: skip
    rows = claims(with_compile, n_layers=4)
    assert [c.met for c in rows] == ["yes"] * 4 + ["-", "yes"]
    assert "CompILE F1@1 0.316, NMI 0.003" in rows[4].ours and "metacontroller F1@1 0.950" in (
        rows[4].ours
    )
    failing = with_compile | {"compare:compare/internal_rl (compile)/final_success": 0.2}
    assert claims(failing, n_layers=4)[-1].met == "no"
    # the seen-transition control: a row after Fig 8's, without a bar
    with_seen = with_compile | {
        "seen:compare/internal_rl/final_success": 0.596,
        "seen:compare/internal_rl/episodes_to_0.5": 68608.0,
        "seen:compare/internal_rl (compile)/final_success": 0.005,
        "seen:compare/internal_rl (compile)/episodes_to_0.5": float("nan"),
    }
    rows = claims(with_seen, n_layers=4)
    assert [c.met for c in rows] == ["yes"] * 4 + ["-", "yes", "-"]
    assert rows[-1].ours == ("internal_rl 0.596 (0.5 after 68,608 episodes); "
                             "internal_rl (compile) 0.005")  # fmt: skip


def _fake_runner(workers: int, fail: tuple[str, ...] = ()):
    """A LocalRunner whose jobs are short sleeps (no processes): the scheduling alone.

    ``runner.events`` lists ("start" | "end", job folder name) in time order.
    """
    import threading
    import time

    from irl_lens.cli.sweep import JobResult, LocalRunner

    runner = LocalRunner(workers, progress=False, poll_s=0.01)
    runner.events, lock = [], threading.Lock()

    def one(job):
        with lock:
            runner.events.append(("start", job.out.name))
        time.sleep(0.05)
        with lock:
            runner.events.append(("end", job.out.name))
        return JobResult(job, 1 if job.out.name in fail else 0, 0.05)

    runner._one = one
    return runner


def test_a_job_starts_once_its_needs_are_done_and_independent_jobs_fill_free_workers(tmp_path):
    from irl_lens.cli.sweep import Job

    base, mc = tmp_path / "base", tmp_path / "mc"
    jobs = [Job([], base), Job([], mc, needs=(base,)), Job([], tmp_path / "rl", needs=(mc,)),
            Job([], tmp_path / "raw", needs=(base,)), Job([], tmp_path / "data")]  # fmt: skip
    runner, seen = _fake_runner(2), []
    results = runner.run(jobs, on_result=seen.append)
    assert [r.job for r in results] == jobs and all(r.returncode == 0 for r in results)
    assert sorted(r.job.out.name for r in seen) == sorted(j.out.name for j in jobs)
    ev = runner.events
    for later, earlier in (("mc", "base"), ("raw", "base"), ("rl", "mc")):
        assert ev.index(("start", later)) > ev.index(("end", earlier)), (later, ev)
    # "data" needs nothing: it starts beside "base" instead of waiting behind the chain
    assert ev.index(("start", "data")) < ev.index(("end", "base"))


def test_jobs_finished_earlier_are_counted_before_any_job_starts(tmp_path):
    from irl_lens.cli.sweep import Job

    jobs = [Job([], tmp_path / name) for name in ("a", "done1", "b", "done2")]
    for name in ("done1", "done2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text("{}")
    runner, seen = _fake_runner(1), []
    results = runner.run(
        jobs, on_result=lambda r: seen.append((r.job.out.name, len(runner.events)))
    )
    # both finished jobs are recorded before the one worker starts "a", not after "a" ends
    assert seen[:2] == [("done1", 0), ("done2", 0)], seen
    assert [r.skipped for r in results] == [False, True, False, True]
    assert [e for e in runner.events if e[0] == "start"] == [("start", "a"), ("start", "b")]


def test_a_failed_job_blocks_what_needs_it_and_a_cycle_is_an_error(tmp_path):
    from irl_lens.cli.sweep import Job

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    runner = _fake_runner(2, fail=("a",))
    ra, rb, rc = runner.run([Job([], a), Job([], b, needs=(a,)), Job([], c)])
    assert ra.returncode == 1 and rb.returncode == -1 and rb.blocked_by == a
    assert rc.returncode == 0 and ("start", "b") not in runner.events
    with pytest.raises(ValueError, match="cycle"):
        _fake_runner(2).run([Job([], a, needs=(b,)), Job([], b, needs=(a,))])


def test_a_failed_job_ends_reproduce_with_one_line_naming_its_log(tmp_path, monkeypatch, capsys):
    from irl_lens.cli import sweep
    from irl_lens.cli.sweep import JobResult

    def run(self, jobs, bar=None, desc="", on_result=None):  # the first job fails, the rest wait
        log = jobs[0].out.parent / f"{jobs[0].out.name}.log"
        return [JobResult(jobs[0], 3, 0.1, log=log),
                *[JobResult(j, -1, 0.0, blocked_by=jobs[0].out) for j in jobs[1:]]]  # fmt: skip

    monkeypatch.setattr(sweep.LocalRunner, "run", run)
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "gridworld", "--out", str(tmp_path / "r"), *ARGS])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after the progress bar)
    assert e.value.code == 1 and err.startswith("error: reproduce: "), err
    assert "data.log) failed; 24 job(s) that need it were not started" in err
    assert "run the same command again" in err


def test_reproduce_hands_the_runner_the_ablations_last(tmp_path, monkeypatch):
    """The runner starts ready jobs in list order; reproduce lists the ablations' jobs
    (``beta1``, ``cotrain``: discovery, refit, RL) after every other, so internal RL on
    ``full`` and raw-action RL start before the ablations' discoveries, and otherwise keeps
    the stage order."""
    from irl_lens.cli import sweep
    from irl_lens.cli.reproduce import ReproduceSettings, stages
    from irl_lens.cli.sweep import JobResult

    handed = {}

    def run(self, jobs, bar=None, desc="", on_result=None):  # record the order, then stop
        handed["jobs"] = list(jobs)
        return [JobResult(jobs[0], 3, 0.1), *[JobResult(j, -1, 0.0, blocked_by=jobs[0].out)
                                              for j in jobs[1:]]]  # fmt: skip

    monkeypatch.setattr(sweep.LocalRunner, "run", run)
    for env, args in (("gridworld", ARGS), ("ant", ["--preset", "tiny"])):
        out = tmp_path / env
        with pytest.raises(SystemExit):
            main(["reproduce", env, "--out", str(out), *args])
        names = [j.out.name for j in handed["jobs"]]
        ablation = [any(v in n for v in ("beta1", "cotrain")) for n in names]
        assert any(ablation) and ablation == sorted(ablation), names  # all of them last
        settings = ReproduceSettings(env=env, preset="tiny", rl_seeds=3 - (env == "gridworld"))
        in_stages = [j.out.name for stage in stages(out, settings) for j in stage.jobs]
        for group in (False, True):  # each group in stage order
            kept = [n for n, a in zip(names, ablation, strict=True) if a == group]
            assert kept == [n for n in in_stages if n in kept], (group, kept)
        first_rl = "rl-full-commit-s0" if env == "gridworld" else "rl-full-s0"
        assert names.index(first_rl) < names.index("mc-beta1") and "rl-raw-s0" in names


def test_reproduce_ant_runs_every_stage_in_the_ant_engine(tmp_path, capsys):
    out = tmp_path / "ant"
    args = ["reproduce", "ant", "--out", str(out), "--preset", "tiny", "--pretrain-episodes",
            "12", "--clean-episodes", "10", "--workers", "2", "--rl-seeds", "1"]  # fmt: skip
    main(args)
    for path in ("data/meta.json", "data-clean/meta.json", "base/model.safetensors",
                 "base/probe/summary.json", "base/controllers/summary.json",
                 "mc-full/summary.json", "mc-beta1/summary.json", "mc-cotrain/summary.json",
                 "rl-full-s0/summary.json", "rl-raw-s0/summary.json", "rl-beta1-s0/summary.json",
                 "rl-cotrain-s0/summary.json", "compare/summary.json"):  # fmt: skip
        assert (out / path).is_file(), path
    meta = json.loads((out / "data" / "meta.json").read_text())
    assert meta["env"] == "ant" and meta["n_episodes"] == 12
    assert json.loads((out / "mc-full" / "config.json").read_text())["data"].endswith("data-clean")
    cotrain = json.loads((out / "mc-cotrain" / "config.json").read_text())["train"]
    assert cotrain["cotrain_from_pretrained"] is True  # the paper's ant ablation
    rl = json.loads((out / "rl-full-s0" / "config.json").read_text())
    assert rl["task"] == "0-1-2-3" and rl["train"]["episodes"] == 32
    report = (out / "report.md").read_text()
    assert report.startswith("# irl_lens reproduction report: ant")
    assert "RL seeds 1 (internal RL on `full` and raw-action RL, seed for seed)" in report
    card = json.loads((Path(__file__).parents[1] / "irl_lens/assets/ant_expert.json").read_text())
    success = card["summary"]
    expert = f"{success['eval/pretrain_success']:.3f} / {success['eval/post_success']:.3f}"
    assert "| The PPO expert solves ant-pinpad (App C.1.1) |" in report and expert in report
    assert "not run" not in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["expert:eval/pretrain_success"] == card["summary"]["eval/pretrain_success"]
    for key in ("mc:switching/f1_tol1", "probe:probe/best_accuracy", "mc:steering/mean_steered",
                "controllers:controllers/best_success", "compare:compare/internal_rl/final_success",
                "compare:compare/raw_rl/final_success"):  # fmt: skip
        assert key in summary, key
    mtime = (out / "base" / "model.safetensors").stat().st_mtime
    main(args)  # a rerun skips every finished job
    assert (out / "base" / "model.safetensors").stat().st_mtime == mtime


def test_reproduce_ant_refuses_the_sweep(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "ant", "--out", str(tmp_path / "a"), "--with-sweep"])
    assert e.value.code == 2 and "--with-sweep" in capsys.readouterr().err


def test_expected_seconds_come_from_the_measured_quick_runs_and_scale_with_episodes(tmp_path):
    from irl_lens.cli.progress import MEASURED, expected_seconds
    from irl_lens.cli.reproduce import ReproduceSettings, stages

    s = ReproduceSettings(rl_episodes=150_016, with_sweep=True)
    jobs = {j.out.name: j for stage in stages(tmp_path, s) for j in stage.jobs}
    grid = MEASURED[("gridworld", "quick")]
    assert expected_seconds(jobs["data"], s) == grid["data"].seconds  # 200k episodes, as measured
    assert expected_seconds(jobs["base"], s) == grid["pretrain"].seconds
    assert expected_seconds(jobs["rl-raw-s0"], s) == grid["raw-rl"].seconds / 2  # half the budget
    sweep = grid["discover"].seconds * 3 * 14 / 2  # 42 discover runs, two at a time
    assert expected_seconds(jobs["rd"], s) == sweep
    tiny = ReproduceSettings(preset="tiny")  # never measured: no estimate
    assert all(expected_seconds(j, tiny) is None for st in stages(tmp_path, tiny) for j in st.jobs)


def _chain(tmp_path):
    """Fake jobs a -> b, and c beside them (no processes)."""
    from irl_lens.cli.sweep import Job

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    return [Job([], a), Job([], b, needs=(a,)), Job([], c)]


def test_the_schedule_lays_jobs_out_as_the_runner_runs_them(tmp_path):
    from irl_lens.cli.progress import schedule_end

    jobs = _chain(tmp_path)
    seconds = {j.out: d for j, d in zip(jobs, (10.0, 5.0, 20.0), strict=True)}
    assert schedule_end(jobs, seconds, workers=2) == 20.0  # a, b on one worker, c beside them
    assert schedule_end(jobs, seconds, workers=1) == 35.0  # one after another
    # at t = 30 nothing has finished: a ends at 30 at the earliest, then b takes its 5 s
    assert schedule_end(jobs, seconds, workers=2, now=30.0) == 35.0
    done = {jobs[0].out}  # a finished (at 10); b, c still run
    assert schedule_end(jobs, seconds, workers=2, now=12.0, finished=done) == 20.0


def test_time_left_is_the_remaining_expected_schedule_at_the_pace_of_finished_jobs(tmp_path):
    from irl_lens.cli.progress import PRIOR_S, TimeLeft
    from irl_lens.cli.sweep import JobResult

    a, b, c = jobs = _chain(tmp_path)
    clock = TimeLeft(jobs, {a.out: 1000.0, b.out: 500.0, c.out: 2000.0}, workers=2)
    assert clock.total == 3500.0 and clock.seconds_left(0.0) == 2000.0
    assert clock.seconds_left(300.0) == 1700.0  # counts down between jobs
    assert clock.record(JobResult(a, 0, 2000.0)) == 1000.0  # twice as slow as expected
    pace = (PRIOR_S + 2000.0) / (PRIOR_S + 1000.0)
    assert clock.pace == pytest.approx(pace)
    # b starts when a ends (2000) and c ran from 0: both at the pace of a
    assert clock.seconds_left(2000.0) == pytest.approx(max(2000 + 500 * pace, 2000 * pace) - 2000)
    unknown = TimeLeft(jobs, {a.out: 1000.0, b.out: None, c.out: 2000.0}, workers=2)
    assert unknown.seconds_left(0.0) is None and unknown.weight(a.out) == 1.0  # jobs, not seconds
    unknown.record(JobResult(b, 0, 10.0))
    assert unknown.seconds_left(10.0) is not None  # the job without an estimate is done


def test_early_data_jobs_do_not_make_an_hour_look_like_a_minute(tmp_path):
    """Issue 27: "57 s left" at minute 2 of the quick gridworld pipeline."""
    from irl_lens.cli.progress import TimeLeft, expected_seconds
    from irl_lens.cli.reproduce import ReproduceSettings, stages
    from irl_lens.cli.sweep import JobResult

    s = ReproduceSettings()
    jobs = [j for stage in stages(tmp_path, s) for j in stage.jobs]
    clock = TimeLeft(jobs, {j.out: expected_seconds(j, s) for j in jobs}, s.workers)
    # the measured jobs, two at a time: ~4 h 20 min since the commitment refit, the 300k
    # RL budget, the CompILE baseline, the seen-task control and raw-action RL on 3 seeds
    # (before them the measured run took 3,539 s)
    assert 14500 < clock.seconds_left(0.0) < 16500
    for job in jobs[:3]:  # the data jobs, quicker than measured
        clock.record(JobResult(job, 0, 2.0))
    assert clock.seconds_left(120.0) > 5000


def test_the_pipeline_bar_fills_by_expected_seconds_through_the_runners_bar_interface(tmp_path):
    from irl_lens.cli.progress import PipelineBar, TimeLeft

    jobs = _chain(tmp_path)
    clock = TimeLeft(jobs, dict(zip([j.out for j in jobs], (10.0, 5.0, 85.0), strict=True)), 2)
    out = io.StringIO()
    bar = PipelineBar(clock, desc="reproduce", file=out)
    _fake_runner(2).run(jobs, bar=bar, on_result=bar.finished)
    assert bar.n == bar.total == 100.0 and set(clock.took) == {j.out for j in jobs}
    bar.close()
    assert "3/3 jobs [" in out.getvalue() and "100%" in out.getvalue()
    clock = TimeLeft(jobs, {j.out: None for j in jobs}, 2)
    with PipelineBar(clock, file=io.StringIO()) as bar:
        bar.update(1)  # the runner's count alone does not move it
        assert bar.n == 0 and "0/3 jobs [00:00<?]" in str(bar)


def _git_head(folder: Path) -> str:
    import subprocess

    return subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip


def test_the_report_names_the_version_and_commit_from_any_working_folder(tmp_path, monkeypatch):
    import importlib.metadata

    import irl_lens
    from irl_lens.cli.report import installed_version, source_commit
    from irl_lens.cli.reproduce import ReproduceSettings, report

    head = _git_head(Path(irl_lens.__file__).parent.parent)
    monkeypatch.chdir(tmp_path)  # outside the checkout
    version = importlib.metadata.version("irl-lens")
    assert installed_version() == version and source_commit().startswith(head)
    text = report(tmp_path / "r", ReproduceSettings(), {}, {})
    assert f"irl-lens {version}, commit {head}" in text and "unknown" not in text.split("\n")[2]


def test_the_commit_falls_back_on_the_install_record(tmp_path):
    import subprocess

    import irl_lens
    from irl_lens.cli.report import source_commit

    checkout = Path(irl_lens.__file__).parent.parent
    assert source_commit(tmp_path, {}) == "unknown (not a git checkout)"
    assert source_commit(tmp_path, {"vcs_info": {"vcs": "git", "commit_id": "abc123"}}) == "abc123"
    editable = {"url": checkout.as_uri(), "dir_info": {"editable": True}}
    assert source_commit(tmp_path, editable).startswith(_git_head(checkout))
    # a copy of the package inside some other checkout that does not track it (a virtual
    # environment in a clone): not its commit
    repo, git = tmp_path / "repo", ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    (repo / "venv" / "irl_lens").mkdir(parents=True)
    (repo / "venv" / "irl_lens" / "__init__.py").write_text("")
    subprocess.run([*git, "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    assert source_commit(repo / "venv" / "irl_lens", {}) == "unknown (not a git checkout)"


def test_a_report_over_finished_folders_says_no_job_ran(tmp_path):
    from irl_lens.cli.reproduce import ReproduceSettings, report

    text = report(tmp_path, ReproduceSettings(preset="tiny"), {}, {})
    assert "No job ran in this folder's reproductions" in text and "Total 0 s" not in text
    timed = report(tmp_path, ReproduceSettings(preset="tiny"), {},
                   {"total": 12.0, "jobs": {"base": 7.0}})  # fmt: skip
    assert "Total 12 s" in timed and "| base | base | 7 |" in timed
