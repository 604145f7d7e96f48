"""The ``irl-lens`` command line: every command parses its options, makes one library call
and prints a short table. This is the only floor of ``irl_lens`` that imports ``analyses``.

:mod:`~irl_lens.cli.app` holds the typer app and the entry point :func:`main`; the other
modules register their commands on it (data and training in ``app``, analyses in
``analysis`` and ``discovery``, RL in ``rl``, ant in ``ant``, pipelines in ``pipeline``,
with the job runners ``reproduce`` and ``sweep`` and the ``bench`` workloads).
"""

from irl_lens.cli.app import app, main

__all__ = ["app", "main"]
