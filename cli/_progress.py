"""A one-line progress display on stderr for training runs (steps, ETA, losses)."""

from __future__ import annotations

import sys
import time


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(max(seconds, 0))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


class TrainBar:
    """Callable progress sink for :class:`persona_sdk.trainer.TrainProgress`."""

    def __init__(self, label: str = "training", width: int = 24) -> None:
        self.label = label
        self.width = width
        self.tty = sys.stderr.isatty()
        self.last_val = None
        self._last_print = 0.0

    def __call__(self, p) -> None:
        if p.phase == "load":
            sys.stderr.write("Loading the backbone...\n")
            return
        if p.val_loss is not None:
            self.last_val = p.val_loss
        if p.phase == "eval":
            sys.stderr.write(f"Validation loss before training: {p.val_loss:.3f}\n")
            return
        total = max(p.total_steps, 1)
        # how far along: the step count, or the time when a budget ends the run first (the ETA says which)
        by_time = p.elapsed / (p.elapsed + p.eta) if p.eta is not None and p.elapsed + p.eta > 0 else 0.0
        done = min(max(p.step / total, by_time), 1.0) if p.phase != "done" else 1.0
        bar = "#" * int(done * self.width) + "-" * (self.width - int(done * self.width))
        tl = f"{p.train_loss:.3f}" if p.train_loss is not None else "-"
        vl = f"{self.last_val:.3f}" if self.last_val is not None else "-"
        line = (f"{self.label} [{bar}] {100 * done:3.0f}%  step {p.step}  train {tl}  val {vl}  "
                f"elapsed {_fmt_time(p.elapsed)}  eta {_fmt_time(p.eta)}")
        now = time.monotonic()
        if self.tty:
            sys.stderr.write("\r" + line)
            if p.phase == "done":
                sys.stderr.write("\n")
        elif p.phase == "done" or p.val_loss is not None or now - self._last_print > 30:
            sys.stderr.write(line + "\n")
            self._last_print = now
        sys.stderr.flush()
