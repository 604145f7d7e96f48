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
