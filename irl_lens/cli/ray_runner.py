"""Running a pipeline's jobs on a Ray cluster (``--runner ray``; ``pip install irl-lens[ray]``).

:class:`RayRunner` keeps :class:`~irl_lens.cli.sweep.LocalRunner`'s scheduling (a job starts
once the jobs it ``needs`` are done; a failed need blocks what depends on it; finished jobs
are skipped, interrupted ones resume) and hands each job to Ray as one remote task that asks
for the job's CPUs (its torch threads) and one GPU when its command line says
``--device cuda`` (``auto`` asks for none: it takes a GPU only where one is free to see).
The task runs the same ``irl-lens`` subprocess a local job runs
(:func:`~irl_lens.cli.sweep.run_job_process`), on whichever node Ray picks, so every node
must see the run folders at the same path (a shared filesystem) and have irl-lens installed.

``ray.init(address=...)``: the ``--ray-address`` option, else ``$RAY_ADDRESS``, else a local
Ray started for this process (all of this machine's cores). How to run on several machines:
``docs/cluster.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from irl_lens.cli.sweep import Job, LocalRunner, run_job_process

logger = logging.getLogger(__name__)

RUNNERS = ("local", "ray")


def _ray():
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--runner ray: Ray is not installed; pip install 'irl-lens[ray]' (ray 2.x)"
        ) from None
    return ray


def gpus_wanted(args: Sequence[str]) -> int:
    """1 when the job's command asks for ``--device cuda``, else 0."""
    args = list(args)
    return int("--device" in args and args[args.index("--device") + 1] == "cuda")


class RayRunner(LocalRunner):
    """Jobs as Ray tasks (module docstring). ``workers``: jobs in flight at once (default:
    the cluster's CPUs); ``address``: the cluster (None: ``$RAY_ADDRESS`` or a local Ray)."""

    def __init__(self, workers: int | None = None, progress: bool = True,
                 address: str | None = None, poll_s: float = 2.0) -> None:  # fmt: skip
        ray = _ray()
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            # Ray runs tasks at nice 15; here the tasks are the work, so a local Ray runs
            # them at 0 (a cluster: start its nodes with RAY_worker_niceness=0)
            system = None if address else {"worker_niceness": 0}
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, _system_config=system)  # fmt: skip
        cpus = int(ray.cluster_resources().get("CPU", 1))
        super().__init__(workers or cpus, progress=progress, poll_s=poll_s)
        self._task = ray.remote(run_job_process)

    def _execute(self, job: Job) -> tuple[int, float]:
        ray = _ray()
        args = job.command()  # on the driver: --resume added or a leftover cleared first
        ref = self._task.options(num_cpus=job.threads, num_gpus=gpus_wanted(args)).remote(
            args, Path(job.out), job.threads
        )
        return ray.get(ref)


def make_runner(kind: str, workers: int | None = None, progress: bool = True,
                address: str | None = None) -> LocalRunner:  # fmt: skip
    """``local`` (:class:`LocalRunner`) or ``ray`` (:class:`RayRunner`)."""
    if kind not in RUNNERS:
        raise ValueError(f"--runner {kind!r}: allowed {', '.join(RUNNERS)}")
    if kind == "ray":
        return RayRunner(workers, progress=progress, address=address)
    if address:
        raise ValueError("--ray-address: only with --runner ray")
    return LocalRunner(workers, progress=progress)
