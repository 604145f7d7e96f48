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
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


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

    @property
    def done(self) -> bool:
        return (self.out / self.marker).is_file()


@dataclass
class JobResult:
    job: Job
    returncode: int
    seconds: float
    skipped: bool = False
    log: Path | None = None


class Runner(Protocol):
    def run(self, jobs: Sequence[Job]) -> list[JobResult]: ...


class LocalRunner:
    """Runs jobs as local ``irl-lens`` subprocesses, ``workers`` at a time, one thread each."""

    def __init__(self, workers: int | None = None, progress: bool = True) -> None:
        self.workers = max(1, workers or (os.cpu_count() or 1))
        self.progress = progress

    def _one(self, job: Job) -> JobResult:
        if job.done:
            return JobResult(job, 0, 0.0, skipped=True)
        job.out.parent.mkdir(parents=True, exist_ok=True)
        log = job.out.parent / f"{job.out.name}.log"
        threads = str(job.threads)
        env = os.environ | {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        cmd = [sys.executable, "-m", "irl_lens.cli", "--threads", threads, "-q", *job.args]
        t0 = time.perf_counter()
        with log.open("w") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
        return JobResult(job, rc, time.perf_counter() - t0, log=log)

    def run(self, jobs: Sequence[Job]) -> list[JobResult]:
        results: list[JobResult] = []
        with ThreadPoolExecutor(self.workers) as pool:
            futures = [pool.submit(self._one, job) for job in jobs]
            for fut in tqdm(as_completed(futures), total=len(futures), desc="sweep",
                            unit="run", disable=not self.progress):  # fmt: skip
                res = fut.result()
                if res.returncode != 0:
                    logger.warning("job %s failed (exit %d); see %s", res.job.out,
                                   res.returncode, res.log)  # fmt: skip
                results.append(res)
        order = {id(j): i for i, j in enumerate(jobs)}
        return sorted(results, key=lambda r: order[id(r.job)])


def resumable(args: list[str], folder: Path) -> list[str]:
    """``args`` plus ``--resume`` when ``folder`` holds a checkpoint of an interrupted run."""
    return [*args, "--resume"] if any((folder / "checkpoints").glob("*")) else args


def rate_distortion_jobs(
    run: Path,
    out: Path,
    alphas: Sequence[float],
    seeds: int,
    variants: Sequence[str] = ("full", "cotrain"),
    extra: Sequence[str] = (),
) -> list[Job]:
    """One ``irl-lens discover`` per (variant, alpha, seed) into ``out/VARIANT-aALPHA-sSEED``."""
    jobs = []
    for variant in variants:
        for alpha in alphas:
            for seed in range(seeds):
                folder = out / f"{variant}-a{alpha:g}-s{seed}"
                args = ["discover", str(run), "--out", str(folder), "--variant", variant,
                        "--alpha", f"{alpha:g}", "--seed", str(seed), *extra]  # fmt: skip
                if not (folder / "summary.json").is_file():
                    args = resumable(args, folder)  # interrupted: continue from a checkpoint
                    if "--resume" not in args and folder.exists():  # died before one: restart
                        logger.info("restarting %s (no checkpoint)", folder)
                        shutil.rmtree(folder)
                tags = {"variant": variant, "alpha": alpha, "seed": seed}
                jobs.append(Job(args, folder, tags))
    return jobs
