"""Running the ``irl-lens`` app in-process from tests."""

from __future__ import annotations

from irl_lens.cli import main


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``irl-lens ARGV``."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def tiny_runs(root, base_steps: int = 4):
    """``root/data`` (80 pretraining episodes), ``root/clean`` (60 clean ones) and a tiny
    base model ``root/base`` trained for ``base_steps`` steps, made through the CLI."""
    main(["-q", "data", "gridworld", "--episodes", "80", "--out", str(root / "data")])
    main(["-q", "data", "gridworld", "--split", "clean", "--episodes", "60",
          "--out", str(root / "clean")])  # fmt: skip
    main(["-q", "pretrain", str(root / "data"), "--out", str(root / "base"), "--preset", "tiny",
          "--steps", str(base_steps)])  # fmt: skip
    return root
