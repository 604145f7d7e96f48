"""``irl-lens reproduce``: the paper's pipeline in one command, with a report.

Every job is its own ``irl-lens`` process (:class:`irl_lens.cli.sweep.LocalRunner`), ``workers``
at a time; a job starts as soon as the jobs it needs are done (the raw-action baseline runs
beside the metacontrollers, RL on ``full`` beside the ``cotrain`` training), so no core
idles at a stage boundary. Of the jobs ready at once, the ablations' (``beta1``,
``cotrain``) start last (:func:`headline_first`), so the main comparison finishes first. A
job is skipped when its output already holds its finish marker, so an interrupted
reproduction resumes where it stopped (pretraining, discovery and
RL also resume from their own checkpoints). Every job's wall-clock lands in
``DIR/timing.json``; the report is ``DIR/report.md`` (with the installed version and the
commit it was run from) and ``DIR/summary.json``. The progress bar fills by each job's
expected wall-clock (:data:`MEASURED`, the quick preset's jobs on the 2-core CPU) and
estimates the time left from it (:class:`TimeLeft`).

Stages, in dependency order (quick preset; ``paper`` uses the paper's sizes, for a GPU):

1. data: 200k pretraining episodes, 20k clean episodes (probes, supervised controllers)
   and the same 20k clean layouts with the deterministic expert (``--tie-break first``,
   discovery: the gridworld analogue of the ant's mean-action data)
2. base: the base model (quick preset, both cores)
3. read: linear probes and supervised controllers by layer
4. discover: metacontrollers ``full``, ``beta1`` and ``cotrain`` (quick preset: at layer 1
   with the Gumbel switch, the configuration that switches exactly at the subgoal boundaries
   on the quick base; other presets: layer L/2, sigmoid switch), and the CompILE baseline
   (``irl-lens compile``, issue 31) on the same data at the same layer
5. commit (``--commit``, the quick and tiny presets' default; an addition to the paper, issue
   29): each metacontroller's decoder refitted so that its codes command the base
   (``irl-lens commit`` into ``mc-{full,beta1,cotrain}-commit``), with compositional
   steering on ``post`` in its summary; every RL run on a metacontroller then uses the refit
6. rl: internal RL (3 seeds) on ``full`` and on CompILE's latents (``rl-compile-sK``;
   gridworld), raw-action RL on the same 3 seeds (``rl-raw-sK``), internal RL on ``beta1``
   and ``cotrain`` (one seed each), all on the same budget. On the gridworld also the
   control task of seen transitions (``--task seen``, :data:`irl_lens.envs.pinpad.SEEN_TASK`):
   internal RL on ``full`` and on CompILE, 3 seeds each, into
   ``rl-{full-commit,compile}-seen-sK``, compared in ``compare-seen/``
7. (``--with-sweep``) the rate-distortion sweep

On ant-pinpad (:func:`ant_stages`) the same stages run in the ant rollout engine
(:mod:`irl_lens.rollout.ant`): the shipped expert's data (pretraining: sampled actions;
clean: its mean action, the paper's discovery data, which the metacontrollers train on)
-> base (the one shipped in the package for the preset, :mod:`irl_lens.models.shipped`,
unless ``--from-scratch``; it needs no pretraining data) -> probes and supervised
controllers (post task 0-1-2-3) -> metacontrollers (on 8,000 clean episodes by default;
``cotrain`` from the pretrained base, as in the paper's ant ablation) -> internal RL and
the baselines on a smaller budget (:mod:`irl_lens.presets`: an ant episode is up to 500
MuJoCo steps). The report adds the expert's success from its card.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from irl_lens import presets, runs
from irl_lens.cli.progress import PipelineBar, TimeLeft, expected_seconds
from irl_lens.cli.ray_runner import make_runner
from irl_lens.cli.report import (
    _sweep_section,
    claims,
    collect_summary,
    installed_version,
    source_commit,
)
from irl_lens.cli.sweep import Job, JobResult, JobsFailed
from irl_lens.models.shipped import shipped_card

logger = logging.getLogger(__name__)


ENVS = ("gridworld", "ant")
DEFAULT_EPISODES = {"gridworld": (200_000, 20_000), "ant": (8_000, 8_000)}
"""Pretraining and clean episodes per environment. Ant: 8,000 clean episodes, on which the
quick metacontroller's switch aligns with the colour entries (docs/experiments-log.md,
eleventh session; the 500 used before are a sixteenth of the data it was measured on)."""


@dataclass
class ReproduceSettings:
    env: str = "gridworld"
    """One of :data:`ENVS`."""
    preset: str = "quick"
    seed: int = 0
    rl_seeds: int = 3
    pretrain_episodes: int = 200_000
    clean_episodes: int = 20_000
    rl_episodes: int | None = None
    """Episode budget of every RL run (default: the RL preset's)."""
    workers: int = 2
    with_sweep: bool = False
    sweep_seeds: int = 3
    runner: str = "local"
    """``local`` or ``ray`` (:mod:`irl_lens.cli.ray_runner`)."""
    ray_address: str | None = None
    device: str = "cpu"
    """``auto``, ``cpu`` or ``cuda``: passed to every job whose command runs a model
    (:data:`DEVICE_COMMANDS`)."""
    commit: bool | None = None
    """Refit each metacontroller's decoder (``irl-lens commit``) before internal RL; None:
    the preset's choice (:attr:`irl_lens.presets.Preset.commit`)."""
    from_scratch: bool = False
    """Ant: pretrain the base even where the package ships one for the preset
    (:mod:`irl_lens.models.shipped`)."""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.env not in ENVS:
            raise ValueError(f"ReproduceSettings.env={self.env!r}; allowed: {', '.join(ENVS)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"ReproduceSettings.device={self.device!r}; allowed: auto, cpu, cuda")
        if self.commit is None:
            self.commit = presets.get(self.preset, self.env).commit is not None
        elif self.commit and self.env != "gridworld":
            raise ValueError(
                f"--commit: the commitment refit is measured on the gridworld only, not {self.env}"
            )
        if self.with_sweep and self.env != "gridworld":
            raise ValueError(
                "--with-sweep: the rate-distortion sweep runs on the gridworld only, "
                f"not {self.env}"
            )


@dataclass
class Stage:
    name: str
    jobs: list[Job]


DEVICE_COMMANDS = ("pretrain", "probe", "controllers", "discover", "compile", "commit",
                   "internal-rl", "raw-rl", "sweep")  # fmt: skip
"""The jobs that run a model and take ``--device`` (``data`` and ``compare`` do not)."""
ABLATIONS = ("beta1", "cotrain")
"""The metacontroller variants that are ablations of ``full`` (tagged ``ablation`` on their
discovery, refit and RL jobs; :func:`headline_first`)."""


def stages(out: Path, s: ReproduceSettings) -> list[Stage]:
    """The pipeline as stages of independent jobs (see the module docstring); with a
    device other than the CPU, every job of :data:`DEVICE_COMMANDS` gets ``--device``."""
    found = ant_stages(out, s) if s.env == "ant" else _grid_stages(out, s)
    if s.device != "cpu":
        for stage in found:
            for job in stage.jobs:
                if job.args[0] in DEVICE_COMMANDS:
                    job.args += ["--device", s.device]
    return found


def _grid_stages(out: Path, s: ReproduceSettings) -> list[Stage]:
    p, seed = s.preset, str(s.seed)
    data, clean, base = out / "data", out / "data-clean", out / "base"
    discovery = out / "data-discovery"
    rl = ["--preset", p, "--task", "post"]
    if s.rl_episodes is not None:
        rl += ["--episodes", str(s.rl_episodes)]
    mc_args = ["--data", str(discovery), "--preset", p, "--seed", seed, "--episodes", "1000"]
    # measured on the 4-layer quick base (path features): at layer 1 the Gumbel switch
    # lands exactly on the subgoal boundaries and the codes are the subgoals (NMI 1.0);
    # at layer 2 it switches at every step
    switching = _quick_switching(p)
    mc_args += switching
    mc = {v: out / f"mc-{v}" for v in ("full", *ABLATIONS)}
    # with --commit, RL (and its baselines, the same treatment) runs on the refitted folders
    rl_mc = {v: out / f"mc-{v}-commit" for v in mc} if s.commit else mc
    discover = _discover_stage(base, discovery, mc, mc_args)
    rl_stage = _rl_stage(out, s, base, rl_mc, rl, tag="-commit" if s.commit else "")
    # the CompILE baseline (issue 31): fitted on the same data at the same layer as the
    # metacontrollers (quick: 1; else the default L/2), then internal RL over its latents
    # on the same budget and seeds as on `full`
    compile_dir = out / "compile"
    discover.jobs.append(
        Job(["compile", str(base), "--out", str(compile_dir), "--data", str(discovery),
             "--preset", p, "--seed", seed, *switching[:2]], compile_dir, leftover="resume",
            needs=(base, discovery)))  # fmt: skip
    rl_stage.jobs += _seeded_rl_jobs(out, s, compile_dir, "compile", rl)
    # the control task of seen transitions (SEEN_TASK): where the base needs no composing,
    # both abstractions side by side, on the preset's (shorter) budget
    seen_episodes = s.rl_episodes or presets.get(p).seen_rl_episodes
    seen = ["--preset", p, "--task", "seen",
            *(["--episodes", str(seen_episodes)] if seen_episodes else [])]  # fmt: skip
    rl_stage.jobs += [
        *_seeded_rl_jobs(out, s, rl_mc["full"], f"full{'-commit' if s.commit else ''}",
                           seen, task="seen"),
        *_seeded_rl_jobs(out, s, compile_dir, "compile", seen, task="seen"),
    ]  # fmt: skip
    out_stages = [
        Stage("data", [
            Job(["data", "gridworld", "--split", "pretrain", "--episodes",
                 str(s.pretrain_episodes), "--out", str(data), "--seed", seed], data,
                marker="meta.json", leftover="clear"),
            Job(["data", "gridworld", "--split", "clean", "--episodes", str(s.clean_episodes),
                 "--out", str(clean), "--seed", seed], clean, marker="meta.json",
                leftover="clear"),
            Job(["data", "gridworld", "--split", "clean", "--episodes", str(s.clean_episodes),
                 "--tie-break", "first", "--out", str(discovery), "--seed", seed], discovery,
                marker="meta.json", leftover="clear"),
        ]),
        *_base_and_read_stages(s, data, clean, base),
        discover,
        *([_commit_stage(discovery, mc, rl_mc, ["--preset", p, "--seed", seed])]
          if s.commit else []),
        rl_stage,
    ]  # fmt: skip
    if s.with_sweep:
        # it runs its own worker processes: last, once everything else is done
        before = tuple(j.out for stage in out_stages for j in stage.jobs)
        out_stages.append(Stage("sweep", [
            Job(["sweep", "rate-distortion", str(base), "--out", str(out / "rd"), "--data",
                 str(discovery), "--seeds", str(s.sweep_seeds), "--preset", p, *switching,
                 "--workers", str(s.workers)], out / "rd", needs=before),
        ]))  # fmt: skip
    return out_stages


def _base_and_read_stages(s: ReproduceSettings, data: Path, clean: Path, base: Path,
                          controller_args: tuple[str, ...] = (),
                          shipped: bool = False) -> list[Stage]:  # fmt: skip
    """The base model on ``data`` (``shipped``: the package's, unpacked), then probes and
    supervised controllers on ``clean``."""
    p, seed = s.preset, str(s.seed)
    make_base = (
        Job(["unpack-base", "--out", str(base)], base, marker="model.safetensors",
            leftover="clear")
        if shipped else
        Job(["pretrain", str(data), "--out", str(base), "--preset", p, "--seed", seed], base,
            threads=max(1, s.workers), marker="model.safetensors", leftover="resume",
            needs=(data,))
    )  # fmt: skip
    return [
        Stage("base", [make_base]),
        Stage("read", [
            Job(["probe", str(base), "--data", str(clean), "--seed", seed], base / "probe",
                leftover="clear", needs=(base, clean)),
            Job(["controllers", str(base), "--data", str(clean), "--seed", seed, "--preset",
                 p, *controller_args], base / "controllers", leftover="clear",
                needs=(base, clean)),
        ]),
    ]  # fmt: skip


def _quick_switching(preset: str, *extra: str) -> list[str]:
    """``discover`` arguments of the quick pipelines (``extra`` after them; none for other
    presets): control layer 1 and a Gumbel switch, with which the switch lands on the
    subgoal boundaries of the quick bases (gridworld and ant, docs/experiments-log.md)."""
    return ["--layer", "1", "--switch", "gumbel", *extra] if preset == "quick" else []


def _discover_stage(base: Path, data: Path, mc: dict[str, Path], mc_args: list[str],
                    cotrain_args: tuple[str, ...] = ()) -> Stage:  # fmt: skip
    """The metacontrollers ``full``, ``beta1`` and ``cotrain``, trained on ``data``."""
    return Stage("discover", [
        Job(["discover", str(base), "--out", str(folder), "--variant", v, *mc_args,
             *(cotrain_args if v == "cotrain" else ())], folder, {"ablation": v in ABLATIONS},
            leftover="resume", needs=(base, data))
        for v, folder in mc.items()
    ])  # fmt: skip


def _commit_stage(data: Path, mc: dict[str, Path], committed: dict[str, Path],
                  args: list[str]) -> Stage:  # fmt: skip
    """Each metacontroller's decoder refitted on ``data`` (``irl-lens commit``) into
    ``committed``, so that RL on every variant gets the same treatment."""
    return Stage("commit", [
        Job(["commit", str(mc[v]), "--out", str(folder), "--data", str(data), *args], folder,
            {"ablation": v in ABLATIONS}, leftover="clear", needs=(mc[v], data))
        for v, folder in committed.items()
    ])  # fmt: skip


def _rl_stage(out: Path, s: ReproduceSettings, base: Path, mc: dict[str, Path],
              rl: list[str], tag: str = "") -> Stage:  # fmt: skip
    """Internal RL on ``full`` and raw-action RL on the base, seed for seed (``rl_seeds``
    each), and internal RL on ``beta1`` and ``cotrain``, one seed each, all on the same
    budget (``rl`` arguments). Internal-RL folders are ``rl-VARIANT{tag}-sK``: RL on the
    commitment refits (``tag="-commit"``) never mistakes a finished run on the
    metacontroller as discovered for its own."""
    return Stage("rl", [
        *_seeded_rl_jobs(out, s, mc["full"], f"full{tag}", rl),
        *_seeded_rl_jobs(out, s, base, "raw", rl, command="raw-rl"),
        *[job for v in ABLATIONS
          for job in _seeded_rl_jobs(out, s, mc[v], f"{v}{tag}", rl, n_seeds=1,
                                     tags={"ablation": True})],
    ])  # fmt: skip


def shipped_base_for(preset: str) -> bool:
    """Whether the package ships an ant base pretrained with ``preset``."""
    card = shipped_card()
    return card is not None and card.get("preset") == preset and card.get("env") == "ant"


def _seeded_rl_jobs(out: Path, s: ReproduceSettings, source: Path, name: str,
                    rl: list[str], task: str = "post", command: str = "internal-rl",
                    n_seeds: int | None = None, tags: dict | None = None) -> list[Job]:  # fmt: skip
    """``command`` (internal RL over ``source``'s codes, a metacontroller or CompILE folder;
    or ``raw-rl`` on a base) with seeds ``seed .. seed + n_seeds - 1`` (default
    ``rl_seeds``), into ``rl-{name}-sK`` (``rl-{name}-{task}-sK`` on another task than
    ``post``); each job gets its own copy of ``tags``."""
    stem = f"rl-{name}" + ("" if task == "post" else f"-{task}")
    return [
        Job([command, str(source), "--out", str(out / f"{stem}-s{k}"), "--seed",
             str(s.seed + k), *rl], out / f"{stem}-s{k}", dict(tags or {}), leftover="resume",
            needs=(source,))
        for k in range(s.rl_seeds if n_seeds is None else n_seeds)
    ]  # fmt: skip


def ant_stages(out: Path, s: ReproduceSettings) -> list[Stage]:
    """The ant-pinpad pipeline (see the module docstring)."""
    p, seed = s.preset, str(s.seed)
    ant = presets.get(p, "ant")  # budgets for ant's 500-step MuJoCo episodes
    data, clean, base = out / "data", out / "data-clean", out / "base"
    episodes = ["--episodes", str(ant.eval_episodes)]
    rl_episodes = s.rl_episodes if s.rl_episodes is not None else ant.rl.episodes
    batch = min(presets.ANT_RL_BATCH, rl_episodes)
    rl = ["--preset", p, "--task", "post", "--episodes", str(rl_episodes), "--batch-size",
          str(batch)]  # fmt: skip
    steps = {"controllers": ["--steps", str(ant.controllers.steps)],
             "discover": ["--steps", str(ant.discover.steps)]}  # fmt: skip
    # quick: also the sequence embedder on the top layer, where the ant base holds its
    # target (docs/experiments-log.md)
    mc_args = ["--data", str(clean), "--preset", p, "--seed", seed, *episodes,
               *steps["discover"],
               *_quick_switching(p, "--embed-layer", str(ant.base.n_layers))]  # fmt: skip
    mc = {v: out / f"mc-{v}" for v in ("full", *ABLATIONS)}
    from_package = not s.from_scratch and shipped_base_for(p)
    splits = (("clean", s.clean_episodes, clean),)
    if not from_package:  # the pretraining data only feed pretraining
        splits = (("pretrain", s.pretrain_episodes, data), *splits)
    return [
        Stage("data", [
            Job(["data", "ant", "--split", split, "--episodes", str(n), "--out", str(folder),
                 "--seed", seed], folder, marker="meta.json", leftover="clear")
            for split, n, folder in splits
        ]),
        *_base_and_read_stages(s, data, clean, base,
                               (*episodes, *steps["controllers"]), shipped=from_package),
        # the paper's ant ablation co-trains from the pretrained base (grid: from scratch)
        _discover_stage(base, clean, mc, mc_args, ("--cotrain-from-pretrained",)),
        _rl_stage(out, s, base, mc, rl),
    ]  # fmt: skip


def run_pipeline(out: Path, s: ReproduceSettings, progress: bool = True) -> dict:
    """Run every job not yet finished (each once its needs are done), then write the report."""
    out.mkdir(parents=True, exist_ok=True)
    timing_path = out / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    jobs = [job for stage in stages(out, s) for job in stage.jobs]
    todo = headline_first([job for job in jobs if not job.done])
    logger.info("%d of %d jobs to run (%d finished earlier)", len(todo), len(jobs),
                len(jobs) - len(todo))  # fmt: skip
    clock = TimeLeft(todo, {job.out: expected_seconds(job, s) for job in todo}, s.workers)
    if (left := clock.seconds_left(0.0)) is not None:
        logger.info("expected to take about %.0f min (measured on a 2-core CPU)", left / 60)
    # one bar over the whole pipeline: expected seconds of finished jobs, the time left, and
    # each running job's own progress
    bar = PipelineBar(clock, desc="reproduce", disable=not progress)
    t0, total_before = time.perf_counter(), timing.get("total", 0.0)
    per_job = timing.setdefault("jobs", {})

    def save(result: JobResult) -> None:  # after every job: an interruption keeps what finished
        bar.finished(result)
        name = _job_name(result.job, out)
        per_job[name] = per_job.get(name, 0.0) + result.seconds
        timing["total"] = total_before + time.perf_counter() - t0
        runs.write_json(timing_path, timing)

    with bar:
        runner = make_runner(s.runner, s.workers, progress=progress, address=s.ray_address)
        results = runner.run(todo, bar=bar, on_result=save)
    timing["total"] = total_before + time.perf_counter() - t0
    runs.write_json(timing_path, timing)
    failed = [r for r in results if r.returncode != 0 and r.blocked_by is None]
    if failed:
        blocked = sum(r.blocked_by is not None for r in results)
        names = ", ".join(f"{r.job.out} (log {r.log})" for r in failed)
        raise JobsFailed(f"reproduce: {names} failed" + (
            f"; {blocked} job(s) that need it were not started" if blocked else "") +
            ". Fix the cause and run the same command again: finished jobs are kept")  # fmt: skip
    # this pipeline's RL runs only (an earlier pipeline's rl-* folders may lie beside them),
    # one comparison per task: `compare` for post, `compare-seen` for the seen control
    rl_jobs = [j for j in jobs if j.args[0] in ("internal-rl", "raw-rl")]
    for task, compare_dir in COMPARE_DIRS.items():
        rl_dirs = sorted(str(j.out) for j in rl_jobs if _task_of(j) == task
                         and (j.out / "summary.json").is_file())  # fmt: skip
        if rl_dirs:  # the running interpreter: no reliance on PATH
            cmd = [sys.executable, "-m", "irl_lens.cli", "-q", "compare", *rl_dirs, "--out",
                   str(out / compare_dir)]  # fmt: skip
            subprocess.run(cmd, check=True, capture_output=True)
    summary = collect_summary(out, s.env)
    runs.write_json(out / "summary.json", summary)
    (out / "report.md").write_text(report(out, s, summary, timing))
    return summary


COMPARE_DIRS = {"post": "compare", "seen": "compare-seen"}
"""Where ``run_pipeline`` compares the RL runs of each task (folders under the output)."""


def headline_first(jobs: list[Job]) -> list[Job]:
    """``jobs`` with the ablations' jobs (tag ``ablation``) after all the others, each group
    in its own order. The runner starts ready jobs in list order, so internal RL on ``full``
    and raw-action RL start as soon as their inputs are ready, before the ablations' longer
    discoveries: an interrupted reproduction holds the main comparison first."""
    return sorted(jobs, key=lambda job: bool(job.tags.get("ablation")))


def _task_of(job: Job) -> str:
    return job.args[job.args.index("--task") + 1] if "--task" in job.args else "post"


def _job_name(job: Job, out: Path) -> str:
    """A job's key in ``timing.json`` and the report: its folder relative to ``out``."""
    return str(job.out.relative_to(out))


def _shipped_base_line(out: Path) -> list[str]:
    """Where the base came from, when it is the package's (``irl-lens unpack-base``)."""
    path = out / "base" / "card.json"
    if not path.is_file():
        return []
    card = json.loads(path.read_text())
    seconds = card.get("summary", {}).get("train_seconds")
    return [f"- base: shipped in the package ({card.get('shipped')}; `base/card.json`), "
            f"pretrained with `{card.get('pretrain_command')}`"
            + (f" in {seconds:,.0f} s" if seconds else "")
            + f" on `{card.get('data', {}).get('command')}`"]  # fmt: skip


def report(out: Path, s: ReproduceSettings, summary: dict, timing: dict) -> str:
    """``report.md``: each claim of the paper, our number and verdict, figures, settings."""
    config = out / "base" / "config.json"
    n_layers = json.loads(config.read_text())["model"]["n_layers"] if config.is_file() else None
    rows = claims(summary, n_layers, s.env)
    seconds = timing.get("jobs", {})
    ordered = [(stage.name, job) for stage in stages(out, s) for job in stage.jobs]
    lines = [
        f"# irl_lens reproduction report: {s.env}",
        "",
        f"- date: {time.strftime('%Y-%m-%d')}; irl-lens {installed_version()}, commit "
        f"{source_commit()}; machine {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cores",
        f"- preset `{s.preset}`, seed {s.seed}, RL seeds {s.rl_seeds} (internal RL on "
        f"`full` and raw-action RL, seed for seed), workers {s.workers}",
        *_shipped_base_line(out),
        "",
        f"{sum(r.met == 'yes' for r in rows)} of {sum(r.met != '-' for r in rows)} claims "
        "meet the project's target (rows marked - are reported without one).",
        "",
        "| claim (paper) | paper | target | ours | met | figure |",
        "| --- | --- | --- | --- | --- | --- |",
        *[
            f"| {r.claim} | {r.paper} | {r.target} | {r.ours} | {r.met} | "
            + (f"[{r.figure}]({r.figure}) |" if r.figure != "-" else "- |")
            for r in rows
        ],
        *_sweep_section(out),
        "## Wall-clock (seconds)",
        "",
        *(
            [
                f"Total {timing.get('total', 0.0):.0f} s, {s.workers} jobs at a time (a job "
                "starts when the jobs it needs are done, so the per-job times add up to more "
                "than the total).",
                "",
                "| stage | job | seconds |",
                "| --- | --- | --- |",
                *[
                    f"| {stage} | {name} | {seconds[name]:.0f} |"
                    for stage, job in ordered
                    if (name := _job_name(job, out)) in seconds
                ],
            ]
            if seconds
            else [
                "No job ran in this folder's reproductions: every job's folder was finished "
                "before (each run's own summary.json keeps its time)."
            ]
        ),
        "",
        "## Commands (every job, in stage order; `irl-lens` arguments)",
        "",
        *[f"- {stage}: `irl-lens {' '.join(job.args)}`" for stage, job in ordered],
        "",
        "All numbers: `summary.json` here (flat keys, prefixed by stage).",
    ]
    return "\n".join(lines) + "\n"
