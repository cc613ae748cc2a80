"""The chosen rank's progress: a tqdm bar on a terminal, a few plain lines in a log file, nothing when off.

Progress is the larger of two fractions: iterations done of ``total``, and, when the run has a time budget
(``run.time_budget_s``), training seconds of that budget. A run that stops at its time budget (asynchronous
DSGD with ``iterations: 100000`` as a mere ceiling) then shows how far it is in time, with a true ETA,
instead of 1% of an iteration count it never reaches. The seconds are the caller's training clock
(``update(elapsed_s=...)``, evaluation pauses excluded); without them, this object's own wall clock.

On a terminal the bar redraws in place. When the output is not a terminal (a log file, a pipe, a SLURM
``.out`` file) a redraw would be one more line per update, so a line is written only each time another
``1 / LINE_STEPS`` of the run is done or ``LINE_EVERY_S`` seconds have passed, plus one at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

LINE_STEPS = 10  # non-terminal output: a line per tenth of the run ...
LINE_EVERY_S = 60.0  # ... or per minute, whichever comes first


def _seconds(value: float) -> str:
    value = max(0.0, value)
    if value < 60:
        return f"{value:.0f} s"
    minutes, seconds = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes}:{seconds:02d} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d} h"


class Progress:
    """Progress of one run on the chosen rank (see the module docstring); silent when ``enabled`` is False.

    ``total``: iterations of the run; ``initial``: iterations already done (a resumed run);
    ``time_budget_s``: the run's time budget in training seconds (0: none); ``stream``: where to write
    (default stderr); ``terminal``: force the bar (True) or plain lines (False) instead of asking the stream.
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train", *,
                 time_budget_s: float = 0.0, stream: TextIO | None = None, terminal: bool | None = None) -> None:
        self.total = max(int(total), 1)
        self.budget_s = float(time_budget_s) if time_budget_s and time_budget_s > 0 else 0.0
        self.iterations = int(initial)
        self.elapsed_s: float | None = None
        self.enabled = enabled
        self._desc = desc
        self._stream = stream if stream is not None else sys.stderr
        self._started = time.monotonic()
        self._start_fraction = self.fraction
        self._postfix: dict[str, Any] = {}
        self._bar = None
        self._last_line_at = self._started
        self._last_line_iterations: int | None = None
        self._next_step = int(self._start_fraction * LINE_STEPS + 1e-9) + 1  # the next tenth that gets a line
        self._closed = False
        if not enabled:
            return
        if terminal is None:
            isatty = getattr(self._stream, "isatty", None)
            terminal = bool(isatty and isatty())
        if terminal:
            from tqdm import tqdm

            if self.budget_s:
                self._bar = tqdm(total=self.budget_s, initial=self._position(), desc=desc, unit="s",
                                 dynamic_ncols=True, mininterval=0.5, file=self._stream,
                                 bar_format="{l_bar}{bar}| {n:.1f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")
            else:
                self._bar = tqdm(total=self.total, initial=self.iterations, desc=desc, dynamic_ncols=True,
                                 mininterval=0.5, file=self._stream)

    @property
    def fraction(self) -> float:
        """How much of the run is done, 0..1: the larger of the iteration and the time-budget fractions."""
        done = self.iterations / self.total
        if self.budget_s:
            seconds = self.elapsed_s if self.elapsed_s is not None else time.monotonic() - self._started
            done = max(done, seconds / self.budget_s)
        return min(done, 1.0)

    def _position(self) -> float:
        return self.fraction * self.budget_s if self.budget_s else float(self.iterations)

    def update(self, n: int = 1, *, elapsed_s: float | None = None, **postfix: Any) -> None:
        """``n`` more iterations done; ``elapsed_s``: training seconds so far (for a time budget)."""
        self.iterations += n
        if elapsed_s is not None:
            self.elapsed_s = float(elapsed_s)
        if not self.enabled or self._closed:
            return
        if postfix:
            self._postfix = dict(postfix)
        if self._bar is not None:
            if self.budget_s:
                self._bar.set_postfix({"it": self.iterations, **self._postfix}, refresh=False)
                self._bar.update(self._position() - self._bar.n)
            else:
                if postfix:
                    self._bar.set_postfix(postfix, refresh=False)
                self._bar.update(n)
            return
        now, fraction = time.monotonic(), self.fraction
        if fraction * LINE_STEPS >= self._next_step - 1e-9 or now - self._last_line_at >= LINE_EVERY_S:
            self._write_line(now, fraction)

    def line(self, now: float | None = None) -> str:
        """The plain-text progress line (what a non-terminal stream receives)."""
        now = time.monotonic() if now is None else now
        fraction = self.fraction
        wall = now - self._started
        if self.budget_s:
            seconds = self.elapsed_s if self.elapsed_s is not None else wall
            where = f"{min(seconds, self.budget_s):.1f}/{self.budget_s:g} s of training, {self.iterations} iterations"
        else:
            where = f"{self.iterations}/{self.total} iterations"
        gained = fraction - self._start_fraction
        eta = f", ETA {_seconds(wall * (1 - fraction) / gained)}" if 0 < gained and fraction < 1 else ""
        extra = "".join(f", {key}={value}" for key, value in self._postfix.items())
        return f"{self._desc}: {fraction:4.0%} ({where}), {_seconds(wall)} elapsed{eta}{extra}"

    def _write_line(self, now: float, fraction: float) -> None:
        self._stream.write(self.line(now) + "\n")
        self._stream.flush()
        self._last_line_at = now
        self._last_line_iterations = self.iterations
        self._next_step = int(fraction * LINE_STEPS + 1e-9) + 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self._last_line_iterations != self.iterations:  # the end, unless just written
            self._write_line(time.monotonic(), self.fraction)
