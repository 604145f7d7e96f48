"""Sweeps of independent trainings behind one small runner interface.

A sweep is a list of :class:`Job` (an ``irl-lens`` command line and the folder it writes).
A :class:`Runner` runs them; :class:`LocalRunner` starts each as its own ``irl-lens``
process with one torch thread, ``workers`` at a time (independent trainings on separate
cores beat one training on all of them on a small CPU). A distributed backend only has to
implement ``run(jobs) -> list[JobResult]``.

Jobs whose output folder already holds a ``summary.json`` are skipped, so an interrupted
sweep picks up where it stopped.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from irl_lens import runs

logger = logging.getLogger(__name__)


LEFTOVER = ("keep", "resume", "clear")


class JobsFailed(RuntimeError):
    """Jobs of a pipeline failed; the message names each one and its log."""


@dataclass
class Job:
    """One training: ``irl-lens`` arguments (after the program name) and its output folder."""

    args: list[str]
    out: Path
    tags: dict = field(default_factory=dict)
    threads: int = 1
    """Torch threads of this job's process."""
    marker: str = "summary.json"
    """File inside ``out`` whose presence means the job has finished."""
    leftover: str = "keep"
    """What to do with ``out`` when it exists but the job is not done (an interrupted run):
    ``resume`` passes ``--resume`` when ``out/checkpoints`` holds a checkpoint and otherwise
    clears the folder (the run died before its first one); ``clear`` removes it (the command
    starts over); ``keep`` leaves it to the command (one that continues by itself)."""
    needs: tuple[Path, ...] = ()
    """Output folders of jobs in the same ``run`` call that must finish first (a job given
    to an earlier call, already finished, is not waited for)."""

    def __post_init__(self) -> None:
        if self.leftover not in LEFTOVER:
            raise ValueError(f"Job.leftover={self.leftover!r}: allowed {', '.join(LEFTOVER)}")

    @property
    def done(self) -> bool:
        return (self.out / self.marker).is_file()

    def command(self) -> list[str]:
        """The arguments to run now: ``--resume`` added, or a leftover folder cleared, as
        ``leftover`` says (called just before the job starts). Only a folder that holds one
        of our outputs is ever cleared; anything else is left to the command, which refuses
        it with one line."""
        if self.leftover == "keep" or not self.out.exists():
            return list(self.args)
        ours = runs.output_kind(self.out) is not None
        if self.leftover == "resume" and ours:
            # a run without a complete checkpoint restarts at step 0 under --resume too
            return [*self.args, "--resume"]
        if not ours:
            return list(self.args)
        logger.info("restarting %s from scratch (an interrupted run left it)", self.out)
        shutil.rmtree(self.out)
        return list(self.args)


@dataclass
class JobResult:
    job: Job
    returncode: int
    seconds: float
    skipped: bool = False
    """Already finished before this run: nothing was started."""
    log: Path | None = None
    blocked_by: Path | None = None
    """A job this one needs that failed, so this one never started (returncode -1)."""


class Runner(Protocol):
    def run(
        self,
        jobs: Sequence[Job],
        bar: tqdm | None = None,
        desc: str = "sweep",
        on_result: Callable[[JobResult], None] | None = None,
    ) -> list[JobResult]: ...


_PERCENT = re.compile(r"(\d{1,3})%\|")


def job_progress(log: Path, tail_bytes: int = 4096) -> str:
    """Where a running job stands, from the last progress bar in its log: ``"pretrain 45%"``.

    Jobs write their tqdm bars to their log, one update after another separated by carriage
    returns, so the last bar line in the file's tail is the bar now moving. Empty when the
    log holds no bar (yet).
    """
    try:
        with log.open("rb") as fh:
            fh.seek(max(0, log.stat().st_size - tail_bytes))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    for line in reversed(re.split(r"[\r\n]", text)):
        m = _PERCENT.search(line)
        if m:
            return f"{line[: m.start()].strip().rstrip(':').strip()} {m.group(1)}%".strip()
    return ""


def job_log(job: Job) -> Path:
    """Where a job's output goes: ``OUT.log`` beside its folder."""
    return job.out.parent / f"{job.out.name}.log"


def run_job_process(args: Sequence[str], out: Path, threads: int) -> tuple[int, float]:
    """Run ``irl-lens ARGS`` (with ``threads`` torch threads) as a subprocess of this Python,
    its output to the job's log; ``(exit code, seconds)``. The one way a job runs, locally
    or on a Ray worker."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.parent / f"{out.name}.log"
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "irl_lens.cli", "--threads", str(threads), "-q", *args]
    t0 = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    return rc, time.perf_counter() - t0


class LocalRunner:
    """Runs jobs as local ``irl-lens`` subprocesses, ``workers`` at a time, one thread each.

    The progress bar counts finished jobs and shows, for each running one, the progress bar
    of its own log (``job_progress``), refreshed every ``poll_s`` seconds.
    """

    def __init__(
        self, workers: int | None = None, progress: bool = True, poll_s: float = 2.0
    ) -> None:
        self.workers = max(1, workers or (os.cpu_count() or 1))
        self.progress = progress
        self.poll_s = poll_s
        self._running: dict[str, Path] = {}  # job folder name -> its log, while it runs
        self._lock = threading.Lock()

    def _one(self, job: Job) -> JobResult:  # run() records finished jobs without a worker
        log = job_log(job)
        with self._lock:
            self._running[job.out.name] = log
        try:
            rc, seconds = self._execute(job)
        finally:
            with self._lock:
                self._running.pop(job.out.name, None)
        return JobResult(job, rc, seconds, log=log)

    def _execute(self, job: Job) -> tuple[int, float]:
        """Run ``job`` to its end here: ``(exit code, seconds)`` (a subclass may run it
        elsewhere, e.g. :class:`irl_lens.cli.ray_runner.RayRunner`)."""
        return run_job_process(job.command(), job.out, job.threads)

    def running_progress(self) -> str:
        """``"base: pretrain 45% | mc-full: discover 3%"`` for the jobs running now."""
        with self._lock:
            running = dict(self._running)
        return " | ".join(f"{name}: {job_progress(log) or 'starting'}"
                          for name, log in running.items())  # fmt: skip

    def run(
        self,
        jobs: Sequence[Job],
        bar: tqdm | None = None,
        desc: str = "sweep",
        on_result: Callable[[JobResult], None] | None = None,
    ) -> list[JobResult]:
        """Run ``jobs``, each as soon as a worker is free and the jobs it ``needs`` are done.

        Ready jobs start in list order. A job whose need failed is not started (its result
        has ``blocked_by``). ``bar`` is an outer progress bar to advance (else one of its own);
        ``on_result`` is called with each result as it comes (to save progress that must
        survive an interruption). Results come back in the order of ``jobs``.
        """
        by_out = {j.out: j for j in jobs}
        waiting = list(jobs)
        finished: dict[Path, JobResult] = {}
        running: dict = {}  # future -> job
        own_bar = bar is None
        if own_bar:
            bar = tqdm(total=len(jobs), desc=desc, unit="run", disable=not self.progress)

        def record(res: JobResult) -> None:
            finished[res.job.out] = res
            if res.returncode != 0:
                why = (f"not started: {res.blocked_by} failed" if res.blocked_by
                       else f"exit {res.returncode}; see {res.log}")  # fmt: skip
                logger.warning("job %s failed (%s)", res.job.out, why)
            bar.update(1)
            if on_result is not None:
                on_result(res)

        for job in jobs:  # finished by an earlier call: counted now, no worker needed
            if job.done:
                waiting.remove(job)
                record(JobResult(job, 0, 0.0, skipped=True))
        try:
            with ThreadPoolExecutor(self.workers) as pool:
                while waiting or running:
                    for job in list(waiting):
                        if len(running) >= self.workers:
                            break
                        needs = [n for n in job.needs if n in by_out]
                        failed = [n for n in needs if n in finished
                                  and finished[n].returncode != 0]  # fmt: skip
                        if failed:
                            waiting.remove(job)
                            record(JobResult(job, -1, 0.0, blocked_by=failed[0]))
                        elif all(n in finished for n in needs):
                            waiting.remove(job)
                            running[pool.submit(self._one, job)] = job
                    if not running:
                        if waiting:  # nothing runs and nothing can start: a cycle
                            names = ", ".join(str(j.out) for j in waiting)
                            raise ValueError(f"jobs wait on each other in a cycle: {names}")
                        break
                    done, _ = wait(running, timeout=self.poll_s, return_when=FIRST_COMPLETED)
                    for fut in done:
                        del running[fut]
                        record(fut.result())
                    bar.set_postfix_str(self.running_progress(), refresh=True)
        finally:
            if own_bar:
                bar.close()
        return [finished[j.out] for j in jobs]


def kl_sweep_jobs(
    command: str,
    run: Path,
    out: Path,
    flag: str,
    weights: Sequence[float],
    seeds: int,
    variants: Sequence[str | None] = (None,),
    extra: Sequence[str] = (),
) -> list[Job]:
    """One ``irl-lens COMMAND RUN`` per (variant, KL weight, seed) into
    ``out/[VARIANT-]aWEIGHT-sSEED``, the weight passed as ``flag`` (a variant of None: the
    command has none)."""
    jobs = []
    for variant in variants:
        for weight in weights:
            for seed in range(seeds):
                name = f"a{weight:g}-s{seed}"
                folder = out / (name if variant is None else f"{variant}-{name}")
                chosen = ["--variant", variant] if variant else []
                args = [command, str(run), "--out", str(folder), flag, f"{weight:g}", "--seed",
                        str(seed), *chosen, *extra]  # fmt: skip
                tags = {"variant": variant or command, "alpha": weight, "seed": seed}
                jobs.append(Job(args, folder, tags, leftover="resume"))
    return jobs


def rate_distortion_jobs(
    run: Path,
    out: Path,
    alphas: Sequence[float],
    seeds: int,
    variants: Sequence[str] = ("full", "cotrain"),
    extra: Sequence[str] = (),
) -> list[Job]:
    """One ``irl-lens discover`` per (variant, alpha, seed) into ``out/VARIANT-aALPHA-sSEED``."""
    return kl_sweep_jobs("discover", run, out, "--alpha", alphas, seeds, variants, extra)


def compile_kl_jobs(
    run: Path, out: Path, betas: Sequence[float], seeds: int, extra: Sequence[str] = ()
) -> list[Job]:
    """One ``irl-lens compile`` per (beta_z, seed) into ``out/aBETA-sSEED`` (issue 31)."""
    return kl_sweep_jobs("compile", run, out, "--beta-z", betas, seeds, extra=extra)
