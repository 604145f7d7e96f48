"""``irl-lens reproduce``: the paper's pipeline in one command, with a report.

Every job is its own ``irl-lens`` process (:class:`irl_lens.cli.sweep.LocalRunner`), ``workers``
at a time; a job starts as soon as the jobs it needs are done (the raw-action baseline runs
beside the metacontrollers, RL on ``full`` beside the ``cotrain`` training), so no core
idles at a stage boundary. A job is skipped when its output already holds its finish
marker, so an interrupted reproduction resumes where it stopped (pretraining, discovery and
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
   on the quick base; other presets: layer L/2, sigmoid switch)
5. rl: internal RL (3 seeds) on ``full``; raw-action RL and internal RL on ``beta1`` and
   ``cotrain`` on the same budget
6. (``--with-sweep``) the rate-distortion sweep

On ant-pinpad (:func:`ant_stages`) the same stages run in the ant rollout engine
(:mod:`irl_lens.rollout.ant`): the shipped expert's data (pretraining: sampled actions;
clean: its mean action, the paper's discovery data, which the metacontrollers train on)
-> base -> probes and supervised controllers (post task 0-1-2-3) -> metacontrollers
(``cotrain`` from the pretrained base, as in the paper's ant ablation) -> internal RL and
the baselines on a smaller budget (:data:`ANT_RL_EPISODES`: an ant episode is up to 500
MuJoCo steps). The report adds the expert's success from its card.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from tqdm.auto import tqdm

import irl_lens
from irl_lens import runs
from irl_lens.cli.sweep import Job, JobResult, JobsFailed, LocalRunner

logger = logging.getLogger(__name__)


ENVS = ("gridworld", "ant")
DEFAULT_EPISODES = {"gridworld": (200_000, 20_000), "ant": (2_000, 500)}
"""Pretraining and clean episodes per environment."""


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
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.env not in ENVS:
            raise ValueError(f"ReproduceSettings.env={self.env!r}; allowed: {', '.join(ENVS)}")
        if self.with_sweep and self.env != "gridworld":
            raise ValueError(
                "--with-sweep: the rate-distortion sweep runs on the gridworld only, "
                f"not {self.env}"
            )


@dataclass
class Stage:
    name: str
    jobs: list[Job]


def stages(out: Path, s: ReproduceSettings) -> list[Stage]:
    """The pipeline as stages of independent jobs (see the module docstring)."""
    if s.env == "ant":
        return ant_stages(out, s)
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
    switching = ["--layer", "1", "--switch", "gumbel"] if p == "quick" else []
    mc_args += switching
    mc = {v: out / f"mc-{v}" for v in ("full", "beta1", "cotrain")}
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
        _discover_stage(base, discovery, mc, mc_args),
        _rl_stage(out, s, base, mc, rl),
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
                          controller_args: tuple[str, ...] = ()) -> list[Stage]:  # fmt: skip
    """The base model on ``data``, then probes and supervised controllers on ``clean``."""
    p, seed = s.preset, str(s.seed)
    return [
        Stage("base", [
            Job(["pretrain", str(data), "--out", str(base), "--preset", p, "--seed", seed], base,
                threads=max(1, s.workers), marker="model.safetensors", leftover="resume",
                needs=(data,)),
        ]),
        Stage("read", [
            Job(["probe", str(base), "--data", str(clean), "--seed", seed], base / "probe",
                leftover="clear", needs=(base, clean)),
            Job(["controllers", str(base), "--data", str(clean), "--seed", seed, "--preset",
                 p, *controller_args], base / "controllers", leftover="clear",
                needs=(base, clean)),
        ]),
    ]  # fmt: skip


def _discover_stage(base: Path, data: Path, mc: dict[str, Path], mc_args: list[str],
                    cotrain_args: tuple[str, ...] = ()) -> Stage:  # fmt: skip
    """The metacontrollers ``full``, ``beta1`` and ``cotrain``, trained on ``data``."""
    return Stage("discover", [
        Job(["discover", str(base), "--out", str(folder), "--variant", v, *mc_args,
             *(cotrain_args if v == "cotrain" else ())], folder, leftover="resume",
            needs=(base, data))
        for v, folder in mc.items()
    ])  # fmt: skip


def _rl_stage(out: Path, s: ReproduceSettings, base: Path, mc: dict[str, Path],
              rl: list[str]) -> Stage:  # fmt: skip
    """Internal RL (``rl_seeds`` seeds) on ``full``; raw-action RL and internal RL on
    ``beta1`` and ``cotrain``, one seed each, all on the same budget (``rl`` arguments)."""
    seed = str(s.seed)
    return Stage("rl", [
        *[Job(["internal-rl", str(mc["full"]), "--out", str(out / f"rl-full-s{k}"), "--seed",
               str(s.seed + k), *rl], out / f"rl-full-s{k}", leftover="resume",
              needs=(mc["full"],))
          for k in range(s.rl_seeds)],
        Job(["raw-rl", str(base), "--out", str(out / "rl-raw-s0"), "--seed", seed, *rl],
            out / "rl-raw-s0", leftover="resume", needs=(base,)),
        *[Job(["internal-rl", str(mc[v]), "--out", str(out / f"rl-{v}-s0"), "--seed", seed,
               *rl], out / f"rl-{v}-s0", leftover="resume", needs=(mc[v],))
          for v in ("beta1", "cotrain")],
    ])  # fmt: skip


ANT_RL_EPISODES = {"quick": 5_120, "paper": 1_000_000, "tiny": 32}
"""Ant RL budget per run and preset: an ant episode is up to 500 MuJoCo steps (25x a
gridworld one), so the quick CPU budget is 20 batches of 256 (the paper's ant batch)."""
ANT_EVAL_EPISODES = {"quick": 500, "paper": 1000, "tiny": 4}
"""Ant rollout episodes per controller layer, steering task and prior sampling."""
ANT_TRAIN_STEPS = {"quick": {"controllers": 300, "discover": 400}, "paper": {}, "tiny": {}}
"""Ant training steps where the preset's own would not fit the CPU (quick: an ant batch of
4,096 tokens holds ~10 episodes, and a discovery step with the full-matrix decoder takes
~1 s here, so the gridworld's 2,000 steps would take over half an hour per metacontroller)."""


def ant_stages(out: Path, s: ReproduceSettings) -> list[Stage]:
    """The ant-pinpad pipeline (see the module docstring)."""
    p, seed = s.preset, str(s.seed)
    data, clean, base = out / "data", out / "data-clean", out / "base"
    episodes = ["--episodes", str(ANT_EVAL_EPISODES[p])]
    rl_episodes = s.rl_episodes if s.rl_episodes is not None else ANT_RL_EPISODES[p]
    batch = min(256, rl_episodes)
    rl = ["--preset", p, "--task", "post", "--episodes", str(rl_episodes), "--batch-size",
          str(batch)]  # fmt: skip
    steps = {k: ["--steps", str(v)] for k, v in ANT_TRAIN_STEPS[p].items()}
    mc_args = ["--data", str(clean), "--preset", p, "--seed", seed, *episodes,
               *steps.get("discover", [])]  # fmt: skip
    mc = {v: out / f"mc-{v}" for v in ("full", "beta1", "cotrain")}
    return [
        Stage("data", [
            Job(["data", "ant", "--split", split, "--episodes", str(n), "--out", str(folder),
                 "--seed", seed], folder, marker="meta.json", leftover="clear")
            for split, n, folder in (("pretrain", s.pretrain_episodes, data),
                                     ("clean", s.clean_episodes, clean))
        ]),
        *_base_and_read_stages(s, data, clean, base,
                               (*episodes, *steps.get("controllers", []))),
        # the paper's ant ablation co-trains from the pretrained base (grid: from scratch)
        _discover_stage(base, clean, mc, mc_args, ("--cotrain-from-pretrained",)),
        _rl_stage(out, s, base, mc, rl),
    ]  # fmt: skip


@dataclass(frozen=True)
class Measured:
    """One kind of job's wall-clock on the 2-core CPU, two jobs at a time."""

    seconds: float
    episodes: int | None = None
    """The episode budget it took ``seconds`` for, where the time grows with the budget (data
    and RL: ``--episodes``, the RL preset's budget when the job does not pass it); None: the
    time does not depend on it (training steps and evaluations are the preset's)."""


MEASURED: dict[tuple[str, str], dict[str, Measured]] = {
    # README "Results (quick preset, this machine)": `make demo` at commit 98b2da5, 2026-12-02,
    # x86_64, 2 cores, two jobs at a time (the base model on both): the pipeline took 3,539 s
    ("gridworld", "quick"): {
        "data": Measured(13, 200_000),  # the 20k-episode clean splits: 3 s each
        "pretrain": Measured(775),
        "probe": Measured(84),
        "controllers": Measured(846),
        "discover": Measured(927),  # full 883, beta1 770, cotrain 1,129
        "internal-rl": Measured(154, 100_352),  # full 126-128, cotrain 128, beta1 260
        "raw-rl": Measured(754, 100_352),  # the quick RL preset: 98 batches of 1,024
    },
    # README "ant-pinpad (quick preset, this machine)", 2026-12-02, two jobs at a time
    ("ant", "quick"): {
        "data": Measured(39, 2_000),  # the 500 clean episodes: 17 s
        # 3 x the 353 s its last 400 of 1,200 steps took (the whole job, ~1,900 s, was
        # interrupted once and shared the machine with the test suite)
        "pretrain": Measured(1_060),
        "probe": Measured(216),
        "controllers": Measured(1_654),
        "discover": Measured(621),  # full 767, beta1 461, cotrain 634
        "internal-rl": Measured(399, 5_120),  # 364-465 over the five runs
        "raw-rl": Measured(2_750, 5_120),
    },
}
"""Measured wall-clock per (env, preset) and kind of job (the command): what the progress bar
expects. The ``paper`` and ``tiny`` presets have no measurements, so their runs show no time
left."""

SWEEP_RUNS_PER_SEED = 14
"""Runs per seed of ``irl-lens sweep rate-distortion`` as reproduce calls it: its default 7
alphas times 2 variants (frozen base, co-trained)."""


def _option(args: Sequence[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def expected_seconds(job: Job, s: ReproduceSettings) -> float | None:
    """How long ``job`` should take on the 2-core CPU (:data:`MEASURED`); None where its kind
    was not measured for ``s``'s environment and preset."""
    table = MEASURED.get((s.env, s.preset), {})
    if job.args[0] == "sweep":
        # not measured at the preset's steps: its runs are discover jobs like the pipeline's
        # own (same preset, layer, switch and data), ``workers`` at a time
        per_run = table.get("discover")
        n_runs = s.sweep_seeds * SWEEP_RUNS_PER_SEED
        return None if per_run is None else per_run.seconds * n_runs / s.workers
    measured = table.get(job.args[0])
    if measured is None:
        return None
    if measured.episodes is None:
        return float(measured.seconds)
    episodes = int(_option(job.args, "--episodes") or measured.episodes)
    return measured.seconds * episodes / measured.episodes


def schedule_end(
    jobs: Sequence[Job],
    seconds: Mapping[Path, float],
    workers: int,
    now: float = 0.0,
    finished: Collection[Path] = (),
) -> float:
    """When the last of ``jobs`` ends if each takes ``seconds[job.out]`` and they run as
    :meth:`LocalRunner.run` runs them: ``workers`` at a time, each (in list order) as soon as
    the jobs it needs are done. A job not in ``finished`` cannot end before ``now``."""
    outs = {job.out for job in jobs}
    waiting, running, ended, t = list(jobs), {}, set(), 0.0
    while waiting or running:
        for job in list(waiting):
            if len(running) >= workers:
                break
            if all(n in ended for n in job.needs if n in outs):
                waiting.remove(job)
                end = t + seconds[job.out]
                running[job.out] = end if job.out in finished else max(end, now)
        if not running:  # the rest wait on each other: the runner refuses that
            break
        t = min(running.values())
        ended |= {o for o, end in running.items() if end <= t}
        running = {o: end for o, end in running.items() if end > t}
    return t


PRIOR_S = 600.0
"""Weight, in expected seconds, of the calibration machine's pace (1) in :attr:`TimeLeft.pace`:
the first jobs are seconds of data generation, mostly process start-up, and should not set
the pace of an hour of training on their own."""


class TimeLeft:
    """Wall-clock left in a pipeline run, from each job's expected seconds.

    A finished job took what it took; every other job is expected to take its expected
    seconds times :attr:`pace` (how fast the jobs that ran went against their expectation),
    and the jobs are laid out as the runner runs them (:func:`schedule_end`), so jobs side by
    side count once and a job alone at the end counts in full. Unknown (None) while a job to
    run has no expected seconds: no estimate rather than a wrong one.
    """

    def __init__(
        self, jobs: Sequence[Job], expected: Mapping[Path, float | None], workers: int
    ) -> None:
        self.jobs, self.expected, self.workers = list(jobs), dict(expected), workers
        self.took: dict[Path, float] = {}  # job folder -> seconds, once finished
        self._actual = self._expected = PRIOR_S  # seconds of the jobs that ran, and expected

    @property
    def known(self) -> bool:
        return all(v is not None for v in self.expected.values())

    def weight(self, out: Path) -> float:
        """A job's share of the progress bar: its expected seconds (one per job while any job
        has none)."""
        return self.expected[out] if self.known else 1.0

    @property
    def total(self) -> float:
        return sum(self.weight(job.out) for job in self.jobs)

    @property
    def pace(self) -> float:
        """Actual over expected seconds of the jobs that ran, shrunk toward 1 (:data:`PRIOR_S`)."""
        return self._actual / self._expected

    def record(self, result: JobResult) -> float:
        """Note a finished job (failed, blocked and skipped ones too); its share of the bar."""
        out, expected = result.job.out, self.expected[result.job.out]
        self.took[out] = result.seconds
        if result.returncode == 0 and not result.skipped and expected:
            self._actual += result.seconds
            self._expected += expected
        return self.weight(out)

    def seconds_left(self, now: float) -> float | None:
        """Seconds from ``now`` (since the run started) until the last job should end."""
        todo = [job.out for job in self.jobs if job.out not in self.took]
        if any(self.expected[out] is None for out in todo):
            return None
        seconds = self.took | {out: self.expected[out] * self.pace for out in todo}
        return max(0.0, schedule_end(self.jobs, seconds, self.workers, now, self.took) - now)


class PipelineBar(tqdm):
    """The pipeline's progress bar: filled by the expected seconds of finished jobs, with the
    time left from :class:`TimeLeft` and the count of finished jobs.

    :meth:`LocalRunner.run` calls ``update(1)`` for each finished job without saying which;
    this bar moves in :meth:`finished` instead (called from ``on_result``), by that job's
    expected seconds.
    """

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {jobs} jobs [{elapsed}<{left}{postfix}]"

    def __init__(self, clock: TimeLeft, **kwargs) -> None:
        self.clock = clock  # before tqdm's __init__, which draws the bar
        super().__init__(total=clock.total, bar_format=self.FORMAT, **kwargs)

    def update(self, n: float | None = 1) -> None:  # the runner's job count: see finished()
        return None

    def finished(self, result: JobResult) -> None:
        super().update(self.clock.record(result))

    @property
    def format_dict(self) -> dict:
        d = super().format_dict
        left = self.clock.seconds_left(d["elapsed"])
        jobs = f"{len(self.clock.took)}/{len(self.clock.jobs)}"
        return {**d, "jobs": jobs, "left": "?" if left is None else self.format_interval(left)}


def run_pipeline(out: Path, s: ReproduceSettings, progress: bool = True) -> dict:
    """Run every job not yet finished (each once its needs are done), then write the report."""
    out.mkdir(parents=True, exist_ok=True)
    timing_path = out / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    jobs = [job for stage in stages(out, s) for job in stage.jobs]
    todo = [job for job in jobs if not job.done]
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
        results = LocalRunner(s.workers, progress=progress).run(todo, bar=bar, on_result=save)
    timing["total"] = total_before + time.perf_counter() - t0
    runs.write_json(timing_path, timing)
    failed = [r for r in results if r.returncode != 0 and r.blocked_by is None]
    if failed:
        blocked = sum(r.blocked_by is not None for r in results)
        names = ", ".join(f"{r.job.out} (log {r.log})" for r in failed)
        raise JobsFailed(f"reproduce: {names} failed" + (
            f"; {blocked} job(s) that need it were not started" if blocked else "") +
            ". Fix the cause and run the same command again: finished jobs are kept")  # fmt: skip
    compare_dir = out / "compare"
    rl_dirs = sorted(str(d) for d in out.glob("rl-*") if (d / "summary.json").is_file())
    if rl_dirs:
        cmd = [
            sys.executable,
            "-m",
            "irl_lens.cli",
            "-q",
            "compare",
            *rl_dirs,
            "--out",
            str(compare_dir),
        ]  # the running interpreter: no reliance on PATH
        subprocess.run(cmd, check=True, capture_output=True)
    summary = collect_summary(out, s.env)
    runs.write_json(out / "summary.json", summary)
    (out / "report.md").write_text(report(out, s, summary, timing))
    return summary


def _job_name(job: Job, out: Path) -> str:
    """A job's key in ``timing.json`` and the report: its folder relative to ``out``."""
    return str(job.out.relative_to(out))


def _summary(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


SHIPPED_EXPERT_CARD = Path(__file__).resolve().parent / "assets" / "ant_expert.json"
"""The shipped ant expert's card (read as JSON: importing the trainer would import MuJoCo)."""


def collect_summary(out: Path, env: str = "gridworld") -> dict:
    """The headline numbers of every stage, flat (on ant, also the shipped expert's card:
    the data commands use that expert)."""
    base = out / "base"
    flat: dict[str, float] = {}
    if env == "ant":
        for k, v in _summary(SHIPPED_EXPERT_CARD).get("summary", {}).items():
            if isinstance(v, int | float):
                flat[f"expert:{k}"] = float(v)
    for name, path in (("base", base / "summary.json"), ("probe", base / "probe/summary.json"),
                       ("controllers", base / "controllers/summary.json"),
                       ("mc", out / "mc-full/summary.json"),
                       ("compare", out / "compare/summary.json")):  # fmt: skip
        for k, v in _summary(path).items():
            if isinstance(v, int | float):
                flat[f"{name}:{k}"] = float(v)
    return flat


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None or v != v else f"{v:.{digits}f}"


def _known(*values) -> bool:
    return all(v is not None and v == v for v in values)


def _verdict(*checks: bool | None) -> str:
    """``yes`` when every check holds, ``no`` when one fails, ``n/a`` when one is unknown."""
    if any(c is None for c in checks):
        return "n/a"
    return "yes" if all(checks) else "no"


@dataclass
class Claim:
    """One row of the report: a claim of the paper, the bar we set for it, and our number."""

    claim: str
    paper: str
    target: str
    ours: str
    met: str
    figure: str


def _switch_and_code_claims(summary: dict) -> list[Claim]:
    """The metacontroller's claims: switch alignment (Fig 6) and code clustering (Fig 5)."""
    g = summary.get
    out = []
    f1, binary = g("mc:switching/f1_tol1"), g("mc:switching/binary_fraction")
    out.append(Claim(
        "beta switches at subgoal boundaries (Fig 6)", "essentially perfect, quasi-binary",
        "F1 at tolerance 1 >= 0.9, >= 90% of beta within 0.05 of 0 or 1",
        f"F1@1 {_fmt(f1)}, binary fraction {_fmt(binary)}, switches/episode "
        f"{_fmt(g('mc:switching/switches_per_episode'), 2)} (true "
        f"{_fmt(g('mc:switching/true_switches_per_episode'), 2)})",
        _verdict(f1 >= 0.9 if _known(f1) else None, binary >= 0.9 if _known(binary) else None),
        "mc-full/switching_beta.html"))  # fmt: skip

    nmi = g("mc:clustering/nmi")
    steered, free = g("mc:steering/mean_steered"), g("mc:steering/mean_uncontrolled")
    out.append(Claim(
        "Latent codes mean 'go to subgoal k' (Fig 5)", "clusters by subgoal; steering works",
        "NMI >= 0.8; steering >= uncontrolled + 0.1",
        f"NMI {_fmt(nmi)}; steering {_fmt(steered)} vs uncontrolled {_fmt(free)}; a code "
        f"predicts the subgoal {_fmt(g('mc:clustering/subgoal_accuracy'))} (chance "
        f"{_fmt(g('mc:clustering/subgoal_chance'))}) and its target cell R2 "
        f"{_fmt(g('mc:clustering/target_cell_r2'))}; the subgoal before it "
        f"{_fmt(g('mc:clustering/previous_accuracy'))} (chance "
        f"{_fmt(g('mc:clustering/previous_chance'))})",
        _verdict(nmi >= 0.8 if _known(nmi) else None,
                 steered >= free + 0.1 if _known(steered, free) else None),
        "mc-full/clusters.html"))  # fmt: skip
    return out


def claims(summary: dict, n_layers: int | None, env: str = "gridworld") -> list[Claim]:
    """Each claim of the paper against the targets of the project's issues."""
    g = summary.get
    out = []
    if env == "ant":
        pre, post = g("expert:eval/pretrain_success"), g("expert:eval/post_success")
        out.append(Claim(
            "The PPO expert solves ant-pinpad (App C.1.1)", "0.8 pretraining tasks, 0.7 on 0-1-2-3",
            ">= 0.8 / >= 0.7 (mean action)",
            f"{_fmt(pre)} / {_fmt(post)} over {_fmt(g('expert:eval/episodes'), 0)} episodes each "
            "(the shipped expert's card)",
            _verdict(pre >= 0.8 if _known(pre) else None, post >= 0.7 if _known(post) else None),
            "-"))  # fmt: skip
    layer0, best = g("probe:probe/accuracy_layer_0"), g("probe:probe/best_accuracy")
    out.append(Claim(
        "Probe accuracy rises with depth (Fig 3)", "~0.3 -> ~0.5-0.6 mid-depth",
        "best >= 0.5 and >= layer 0 + 0.15",
        f"layer 0 {_fmt(layer0)} -> best {_fmt(best)} (layer "
        f"{_fmt(g('probe:probe/best_layer'), 0)})",
        _verdict(best >= 0.5 and best >= layer0 + 0.15 if _known(best, layer0) else None),
        "base/probe/probe_accuracy.html"))  # fmt: skip

    ctrl = g("controllers:controllers/best_success")
    ctrl_layer = g("controllers:controllers/best_layer")
    base_success = g("controllers:controllers/base_success")
    middle = (None if n_layers is None or not _known(ctrl_layer)
              else n_layers / 3 <= ctrl_layer <= 2 * n_layers / 3)  # fmt: skip
    out.append(Claim(
        "Supervised controllers solve the post task best at mid-depth (Fig 4)",
        "0.2-0.7 at mid-depth; base ~0",
        "best sampled >= 0.5, best layer in the middle third, base <= 0.05",
        f"best {_fmt(ctrl)} sampled / "
        f"{_fmt(g('controllers:controllers/best_success_greedy'))} greedy at layer "
        f"{_fmt(ctrl_layer, 0)} of 0..{n_layers if n_layers is not None else '?'}; base "
        f"{_fmt(base_success)}",
        _verdict(ctrl >= 0.5 if _known(ctrl) else None, middle,
                 base_success <= 0.05 if _known(base_success) else None),
        "base/controllers/controllers_success.html"))  # fmt: skip

    out += _switch_and_code_claims(summary)

    rl = {k.split("/")[1]: v for k, v in summary.items()
          if k.startswith("compare:") and k.endswith("/final_success")}  # fmt: skip
    bars = {"internal_rl": lambda v: v >= 0.5, "raw_rl": lambda v: v <= 0.01,
            "internal_rl_beta1": lambda v: v <= 0.05}  # fmt: skip
    out.append(Claim(
        "Internal RL solves the post task; baselines ~0 (Fig 8)",
        "internal RL high; raw-action, beta1, co-trained ~0 within 1M episodes",
        "internal RL (median of seeds) >= 0.5; raw-action RL <= 0.01; beta1 <= 0.05",
        "; ".join(f"{m} {_fmt(v)}" for m, v in rl.items()) or "n/a",
        _verdict(*[bar(rl[m]) if _known(rl.get(m)) else None for m, bar in bars.items()]),
        "compare/success_linear.html"))  # fmt: skip
    return out


def _sweep_section(out: Path) -> list[str]:
    """The rate-distortion table (``--with-sweep``): empty when no run of it finished."""
    from analyses import rate_distortion as rd

    points = rd.sweep_points(out / "rd")
    if not points:
        return [""]
    return [
        "",
        "## Rate-distortion (paper Fig 7)",
        "",
        "Per variant and alpha: medians over seeds, [min, max]; F1 column: the share of seeds "
        "whose switches align with the subgoal boundaries. The paper's frozen base shows a gap "
        "in the curve where that alignment appears; co-trained runs do not. Figure: "
        "[rd/rate_distortion.html](rd/rate_distortion.html).",
        "",
        *rd.markdown_table(rd.rd_table(points)),
        "",
    ]


PACKAGE_DIR = Path(irl_lens.__file__).resolve().parent
"""The folder ``irl_lens`` is imported from (in an editable install: the checkout's)."""


def _git(folder: Path, *args: str) -> str | None:
    """``git -C folder ARGS``'s output; None when git fails or is missing."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _checkout_commit(package_dir: Path) -> str | None:
    """HEAD of the git checkout that tracks ``package_dir`` as its irl_lens package, marked
    when the checkout has uncommitted changes; None when it is not one (a plain install in a
    virtual environment inside a checkout is not)."""
    if _git(package_dir, "ls-files", "--error-unmatch", "__init__.py") is None:
        return None
    commit = _git(package_dir, "rev-parse", "HEAD")
    if not commit:
        return None
    dirty = _git(package_dir, "status", "--porcelain", "--untracked-files=no")
    return f"{commit} (uncommitted changes)" if dirty else commit


def _direct_url() -> dict:
    """The install's PEP 610 record (``direct_url.json``), or ``{}``. Each distribution named
    irl-lens is tried: run from the checkout, its ``irl_lens.egg-info`` comes first and has
    none."""
    for dist in importlib.metadata.distributions(name="irl-lens"):
        text = dist.read_text("direct_url.json")
        if not text:
            continue
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            logger.warning("%s: unreadable direct_url.json", dist.metadata["Name"])
    return {}


def source_commit(package_dir: Path = PACKAGE_DIR, direct_url: dict | None = None) -> str:
    """The git commit of the running irl_lens, wherever the working folder is.

    Tried in turn: the checkout the package is imported from (an editable install, or a
    clone on ``sys.path``); the commit a ``pip install git+URL`` recorded; the folder an
    editable install records (``direct_url``: the install's PEP 610 record by default).
    """
    direct_url = _direct_url() if direct_url is None else direct_url
    commit = _checkout_commit(package_dir) or direct_url.get("vcs_info", {}).get("commit_id")
    url = direct_url.get("url", "")
    if not commit and direct_url.get("dir_info", {}).get("editable") and url.startswith("file:"):
        commit = _checkout_commit(Path(url2pathname(urlparse(url).path)) / "irl_lens")
    return commit or "unknown (not a git checkout)"


def installed_version() -> str:
    """The installed irl-lens distribution's version (from its metadata, not the source)."""
    try:
        return importlib.metadata.version("irl-lens")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


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
        f"- preset `{s.preset}`, seed {s.seed}, "
        + (f"RL seeds {s.rl_seeds}, " if s.env == "gridworld" else "")
        + f"workers {s.workers}",
        "",
        f"{sum(r.met == 'yes' for r in rows)} of {len(rows)} claims meet the project's target.",
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
        f"Total {timing.get('total', 0.0):.0f} s, {s.workers} jobs at a time (a job starts when "
        "the jobs it needs are done, so the per-job times add up to more than the total).",
        "",
        "| stage | job | seconds |",
        "| --- | --- | --- |",
        *[
            f"| {stage} | {name} | {seconds[name]:.0f} |"
            for stage, job in ordered
            if (name := _job_name(job, out)) in seconds
        ],
        "",
        "## Commands (every job, in stage order; `irl-lens` arguments)",
        "",
        *[f"- {stage}: `irl-lens {' '.join(job.args)}`" for stage, job in ordered],
        "",
        "All numbers: `summary.json` here (flat keys, prefixed by stage).",
    ]
    return "\n".join(lines) + "\n"
