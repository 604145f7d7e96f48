"""How long a pipeline will take: each job's expected wall-clock and the time left.

The progress bar of ``irl-lens reproduce`` fills by expected seconds, not by job count:
:data:`MEASURED` holds each kind of job's wall-clock on the 2-core CPU (quick preset),
:func:`expected_seconds` scales it to a job's budget, :func:`schedule_end` lays the jobs
out as the runner runs them (``workers`` at a time, each once its needs are done), and
:class:`TimeLeft` / :class:`PipelineBar` turn that into the estimate on the bar.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from irl_lens.cli.sweep import Job, JobResult

if TYPE_CHECKING:  # a type only: reproduce imports this module
    from irl_lens.cli.reproduce import ReproduceSettings

logger = logging.getLogger(__name__)


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
        # on a committed metacontroller (issue 29): episodes run longer once the policy
        # completes segments; 300,032 episodes on `full`: 1,070-1,489 s (3 seeds, one thread);
        # on the beta1 / cotrain refits, which fail early: 1,122 / 474 s
        "internal-rl": Measured(1_200, 300_032),
        "raw-rl": Measured(3_294, 300_032),  # 2026-12-06, beside another RL run
        "commit": Measured(270),  # 400 steps ~240 s, then the composition analyses
        # CompILE (issue 31): 1.5 s per step beside two other trainings (four steered base
        # passes per step, one per segment), 2,000 steps
        "compile": Measured(3_000),
    },
    # README "ant-pinpad (quick preset, this machine)", 2026-12-02, two jobs at a time
    ("ant", "quick"): {
        "data": Measured(135, 8_000),  # 8,000 clean episodes, 2026-12-07 (59 episodes/s)
        # the Hawk base with path features (--from-scratch): 1,200 steps one thread beside
        # another training, 2026-12-06 (fifth session): 581-709 s for three variants of it
        # (with the future target, the heading features, both); 3,220 s before the path
        # features relaxed each layout once
        # 2026-12-07 (eleventh session): the quick preset's 2,400 steps with underfoot
        # features, one thread beside another job: 1,431 s
        "pretrain": Measured(1_431),
        "unpack-base": Measured(1),  # the shipped base (irl_lens.models.shipped), copied
        "probe": Measured(216),
        "controllers": Measured(1_654),
        # the quick preset's 2,400 steps and analyses on 500 episodes, full: 2,082 s
        # (2026-12-07, eleventh session; 400 steps took 461-767 s)
        "discover": Measured(2_082),
        # 25,600 episodes on the aligned metacontroller: 1,910 s (seed 1, eleventh session)
        "internal-rl": Measured(1_910, 25_600),
        # 2026-12-07 (twelfth session), the underfoot base on 0-1-2-3 at the quick ant
        # raw-action rate (3e-5), beside three other jobs: 25,600 episodes in 1,900 s (at
        # 1e-3 its episodes ran out the clock after the first update: 3,711 s)
        "raw-rl": Measured(1_900, 25_600),
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
