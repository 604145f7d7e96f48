"""Interrupts: SIGINT and SIGTERM end a command cleanly, with the right exit code.

The ``irl-lens`` entry point installs :func:`install_handlers`. From then on a signal
raises :class:`Interrupted` (not ``KeyboardInterrupt``: click and typer swallow that one and
return 130, which looked like success to callers that dropped the return value). Training
loops run inside :func:`deferred`: there the first signal only sets a flag, the loop polls
:attr:`Deferral.signum` after each whole step, saves a checkpoint of that consistent state
and raises :class:`Interrupted` naming the step. A second signal inside the deferral stops
at once (atomic writes leave no half-written file behind either way).

Exit codes follow the shell convention, 128 + the signal number: 130 for SIGINT, 143 for
SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["Deferral", "Interrupted", "deferred", "install_handlers", "restore_handlers"]


class Interrupted(BaseException):  # noqa: N818 - a signal, not an error
    """A signal ended the command. ``step`` is where a training loop stood, if one ran;
    ``checkpoint`` the step of the run's last complete checkpoint (``None``: none yet)."""

    def __init__(self, signum: int, step: int | None = None, checkpoint: int | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass
class Deferral:
    """Inside :func:`deferred`: ``signum`` is the first signal received (``None``: none)."""

    signum: int | None = None


_ACTIVE: list[Deferral] = []


def _handler(signum: int, frame) -> None:
    if _ACTIVE and _ACTIVE[-1].signum is None:
        _ACTIVE[-1].signum = signum  # finish the step; the loop checkpoints and stops
        return
    raise Interrupted(signum)


def install_handlers() -> dict[int, object]:
    """Route SIGINT and SIGTERM to :class:`Interrupted` (main thread only; no-op elsewhere).
    Returns the handlers they replace, for :func:`restore_handlers`."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def restore_handlers(previous: dict[int, object]) -> None:
    """Put back the handlers :func:`install_handlers` replaced (a caller that runs the CLI
    in-process, such as a test, keeps its own Ctrl-C behaviour afterwards)."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@contextmanager
def deferred() -> Iterator[Deferral]:
    """Hold the first signal until the loop polls ``deferral.signum`` at a step boundary.

    Only effective once :func:`install_handlers` ran (the CLI); in library use a Ctrl-C is
    a plain ``KeyboardInterrupt`` as usual.
    """
    deferral = Deferral()
    _ACTIVE.append(deferral)
    try:
        yield deferral
    finally:
        _ACTIVE.remove(deferral)
