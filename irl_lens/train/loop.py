"""The training loop's frame, written once: checkpoint cadence and safe interrupts.

Every trainer (pretraining, discovery, RL, the ant expert) creates or resumes its run
folder with :func:`irl_lens.runs.start_run` (config check, temp-folder cleanup, metrics cut
back to the checkpoint) and runs its steps inside :func:`guarded`::

    with guarded(bar, step) as guard:
        while step < end:
            ...one whole optimizer step...
            step += 1
            guard.at(step)
            if guard.checkpoint_due(step, cfg.checkpoint_every, cfg.steps):
                runs.save_checkpoint(out, step, model, state())
                guard.saved(step)  # a pending SIGINT/SIGTERM stops here, checkpoint safe

A signal inside the block is held until the step ends (:mod:`irl_lens.interrupts`); the
loop then checkpoints that consistent state and :meth:`Guard.saved` raises
:class:`~irl_lens.interrupts.Interrupted` naming the step, which the CLI turns into exit
130/143 and a "continue with: ... --resume" line.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from tqdm.auto import tqdm

from irl_lens import interrupts, runs


class Guard:
    """Where a guarded loop stands: its step and its last complete checkpoint."""

    def __init__(self, deferral: interrupts.Deferral, step: int) -> None:
        self._deferral = deferral
        self.step = step
        self.saved_at = step
        """Step of the last complete checkpoint (the start step on a fresh or resumed run)."""

    def at(self, step: int) -> None:
        self.step = step

    @property
    def stopping(self) -> bool:
        """A signal arrived: checkpoint now, then :meth:`saved` stops the loop."""
        return self._deferral.signum is not None

    def checkpoint_due(self, step: int, every: int, last: int) -> bool:
        """At the cadence, at the final step, or when a signal asks to stop."""
        return step % every == 0 or step == last or self.stopping

    def saved(self, step: int) -> None:
        """Record a complete checkpoint at ``step``; stop the loop if a signal is pending."""
        self.saved_at = step
        if self.stopping:
            raise interrupts.Interrupted(self._deferral.signum, step, step)


@contextmanager
def guarded(bar: tqdm, step: int) -> Iterator[Guard]:
    """Run a training loop's steps with signals held to step boundaries (module docstring).
    On an interrupt the bar is closed and the exception names the step and checkpoint."""
    with interrupts.deferred() as deferral:
        guard = Guard(deferral, step)
        try:
            yield guard
        except interrupts.Interrupted as e:
            bar.close()
            e.step, e.checkpoint = guard.step, guard.saved_at
            raise


SCHEDULES = ("constant", "cosine")


def lr_at(step: int, lr: float, steps: int, *, schedule: str = "cosine",
          warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> float:  # fmt: skip
    """Learning rate of optimizer step ``step`` (0-based) of ``steps``: a linear warm-up over
    ``warmup_steps``, then ``lr`` (``constant``) or a cosine decay to ``min_lr_ratio * lr``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * cos)


class FirstNonFinite:
    """The first step whose loss is not finite, tracked on the device (no host sync per
    step); :meth:`check` reads it and raises :class:`~irl_lens.runs.NonFiniteError` naming
    the step and the last good checkpoint (call it at log steps and before each save)."""

    def __init__(self, device: torch.device | str, what: str) -> None:
        self.what = what
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.loss = torch.zeros((), device=device)

    def record(self, step: int, loss: torch.Tensor) -> None:
        loss = loss.detach()
        new = (self.step < 0) & ~torch.isfinite(loss)
        self.step = torch.where(new, step, self.step)
        self.loss = torch.where(new, loss, self.loss)

    def check(self, saved_at: int) -> None:
        if (bad := int(self.step)) >= 0:
            raise runs.NonFiniteError(
                f"{self.what}: the loss is {float(self.loss)} at step {bad}; stopped without "
                f"saving (last good checkpoint: step {saved_at}); lower --lr or check the data"
            )


PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device | str, precision: str) -> AbstractContextManager:
    """The forward pass's precision: ``fp32``, or ``bf16`` autocast (matmuls and convolutions
    in bfloat16, reductions and the weights in float32: the optimizer keeps float32 master
    weights). The backward pass runs outside it, in the dtypes autocast chose."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def fast_matmuls(device: torch.device | str) -> None:
    """On CUDA, TF32 for float32 matmuls and convolutions (10-bit mantissa products, float32
    accumulation); a no-op on the CPU, whose numbers stay exactly reproducible."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
