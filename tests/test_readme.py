"""The README's Python quickstart runs, on a tiny pipeline laid out as ``make demo`` lays
out its runs (``runs/demo/base``, ``runs/demo/mc-full``, ``runs/demo/data-clean``)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_quickstart_runs(tmp_path, monkeypatch, capsys):
    from irl_lens.cli import main

    demo = tmp_path / "runs" / "demo"
    main(["-q", "data", "gridworld", "--episodes", "120", "--out", str(demo / "data")])
    main(["-q", "data", "gridworld", "--split", "clean", "--episodes", "60",
          "--out", str(demo / "data-clean")])  # fmt: skip
    main(["-q", "pretrain", str(demo / "data"), "--out", str(demo / "base"), "--preset", "tiny",
          "--steps", "5"])  # fmt: skip
    main(["-q", "discover", str(demo / "base"), "--out", str(demo / "mc-full"), "--data",
          str(demo / "data-clean"), "--preset", "tiny", "--steps", "3",
          "--episodes", "4"])  # fmt: skip
    blocks = _python_blocks(README.read_text())
    assert blocks, "the README has no python block"
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([8" in printed
