"""One progress reporter for every long command: a tqdm bar on a terminal, status lines everywhere else.

    with Progress(total=2000, desc="train") as bar:
        for step in ...:
            bar.update(loss=loss, val=val_loss)          # postfix items shown on the bar / in the lines
            bar.write("checkpoint saved")               # a message that does not break the bar

On a terminal (and ``enabled``) it is a tqdm bar on ``stream``. When ``stream`` is not a terminal (a log file, a
batch job, ``mpirun`` output) or the bar is off (``enabled=False``, e.g. ``--progress false``), it prints one line
every ``every_s`` seconds and one at the end instead::

    train: 120/2000 steps (6%), loss 0.00123, val 0.00211 | 3.1 steps/s, ETA 10 min 6 s

(``every_s=None``: no lines at all when the bar is off). :func:`estimate_line` is the one-line cost estimate a
command prints before a long run.
"""
from __future__ import annotations

import math
import sys
import time


def format_duration(seconds: float) -> str:
    """``42 s``, ``3.5 s``, ``12 min 5 s``, ``1 h 43 min``, ``2 d 3 h``."""
    s = max(0.0, float(seconds))
    if not math.isfinite(s):
        return "?"
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec} s" if sec else f"{m} min"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(h, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def format_per_step(seconds: float, unit: str = "step") -> str:
    """``3.1 s/step``, ``12.5 s/step``, ``0.42 s/step``, ``4.2 ms/step``."""
    s = float(seconds)
    if s < 0.01:
        return f"{s * 1e3:.2g} ms/{unit}"
    return f"{s:.3g} s/{unit}" if s >= 10 else f"{s:.2g} s/{unit}"


def estimate_line(seconds_per_step: float, steps: int, unit: str = "step") -> str:
    """``"estimated 3.1 s/step, 1 h 43 min for 2000 steps"`` (seconds per step from a timed step)."""
    steps = int(steps)
    return (f"estimated {format_per_step(seconds_per_step, unit)}, {format_duration(seconds_per_step * steps)} "
            f"for {steps} {unit}{'s' if steps != 1 else ''}")


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if math.isfinite(v) else str(v)
    return str(v)


class Progress:
    """Progress of ``total`` units of work (see the module docs).

    Args:
        total: units expected (steps, frames, parts); None or 0 when unknown.
        desc: the name shown first (``"train"``).
        enabled: a bar on a terminal; False: status lines only.
        every_s: seconds between status lines when there is no bar (None: no lines).
        stream: where bar and lines go (default ``sys.stdout``).
        unit: what is counted (``"step"``).
        initial: units already done (a resumed run); rates and ETA count from here.
    """

    def __init__(self, total, desc: str, enabled: bool = True, every_s: float | None = 30.0, stream=None,
                 unit: str = "step", initial: int = 0):
        self.total = int(total) if total else 0
        self.desc, self.unit, self.every_s = desc, unit, every_s
        self.stream = stream if stream is not None else sys.stdout
        self.n = self.initial = int(initial)
        self.postfix: dict = {}
        self.t0 = self._last = time.perf_counter()
        self._closed = False
        self._bar = None
        if enabled and _isatty(self.stream):
            from tqdm import tqdm
            self._bar = tqdm(total=self.total or None, initial=self.initial, desc=desc, unit=unit,
                             file=self.stream, dynamic_ncols=True)

    @property
    def bar(self) -> bool:
        """True when a tqdm bar is shown."""
        return self._bar is not None

    def update(self, n: int = 1, **postfix) -> None:
        """``n`` more units done; ``postfix`` items (loss=..., val=...) replace the shown ones of the same name."""
        self.n += int(n)
        self.postfix.update({k: v for k, v in postfix.items() if v is not None})
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _value(v) for k, v in self.postfix.items()}, refresh=False)
            self._bar.update(int(n))
            return
        now = time.perf_counter()
        if self.every_s is not None and now - self._last >= self.every_s:
            self._last = now
            self._print(self.status())

    def track(self, iterable):
        """Yield the items of ``iterable``, counting one unit after each."""
        for item in iterable:
            yield item
            self.update()

    def rate(self) -> float:
        """Units per second since the start (0 before the first unit)."""
        dt = time.perf_counter() - self.t0
        return (self.n - self.initial) / dt if dt > 0 else 0.0

    def status(self, final: bool = False) -> str:
        """The status line: done/total (percent), postfix items | rate, ETA (or the elapsed time when final)."""
        head = f"{self.desc}: {self.n}/{self.total} {self.unit}s" if self.total else f"{self.desc}: {self.n} " \
                                                                                     f"{self.unit}s"
        if self.total:
            head += f" ({100.0 * self.n / self.total:.0f}%)"
        items = ", ".join(f"{k} {_value(v)}" for k, v in self.postfix.items())
        rate = self.rate()
        speed = (f"{rate:.3g} {self.unit}s/s" if rate >= 1 else
                 (format_per_step(1.0 / rate, self.unit) if rate > 0 else f"- {self.unit}s/s"))
        if final:
            tail = f"{speed}, {format_duration(time.perf_counter() - self.t0)} in all"
        elif self.total and rate > 0:
            tail = f"{speed}, ETA {format_duration((self.total - self.n) / rate)}"
        else:
            tail = speed
        return f"{head}{', ' + items if items else ''} | {tail}"

    def write(self, line: str) -> None:
        """Print a message (above the bar when there is one)."""
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            self._print(line)

    def close(self) -> None:
        """End the bar, or print the final status line (when lines are on). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.every_s is not None:
            self._print(self.status(final=True))

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
