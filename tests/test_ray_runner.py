"""`--runner ray` (issue 30): a tiny sweep on a local Ray gives the local runner's results."""

from __future__ import annotations

import json
import os

import pytest

from irl_lens.cli.ray_runner import gpus_wanted, make_runner
from irl_lens.cli.sweep import LocalRunner, rate_distortion_jobs
from tests.cli_helpers import tiny_runs

if os.environ.get("CI") != "true":  # CI installs the dev extra, which brings Ray
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'irl-lens[ray]'")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_runs(tmp_path_factory.mktemp("ray"), base_steps=6)


def _sweep(root, name, runner):
    extra = ["--preset", "tiny", "--steps", "4", "--episodes", "4", "--data", str(root / "clean")]
    jobs = rate_distortion_jobs(root / "base", root / name, [0.1], 2, ["full"], extra)
    results = runner.run(jobs)
    assert all(r.returncode == 0 for r in results), [r.log for r in results]
    return {j.out.name: json.loads((j.out / "summary.json").read_text()) for j in jobs}


def test_a_tiny_sweep_on_ray_equals_the_local_one(base):
    import ray

    local = _sweep(base, "local", LocalRunner(2, progress=False))
    try:
        on_ray = _sweep(base, "ray", make_runner("ray", progress=False))
        assert ray.cluster_resources().get("CPU", 0) >= 1
    finally:
        ray.shutdown()
    assert on_ray.keys() == local.keys()
    for name, summary in local.items():
        same = {k: v for k, v in summary.items() if "seconds" not in k}
        assert {k: on_ray[name][k] for k in same} == same, name


def test_runner_choice_and_gpu_requests():
    assert gpus_wanted(["discover", "--device", "cuda"]) == 1
    assert gpus_wanted(["discover", "--device", "auto"]) == 0 and gpus_wanted(["data"]) == 0
    with pytest.raises(ValueError, match="allowed local, ray"):
        make_runner("slurm")
    with pytest.raises(ValueError, match="only with --runner ray"):
        make_runner("local", address="ray://head:10001")
