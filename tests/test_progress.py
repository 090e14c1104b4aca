"""meshgnn.progress: bar on a terminal, periodic status lines otherwise, the cost estimate line."""
from __future__ import annotations

import io

import pytest

from meshgnn import progress as progress_mod
from meshgnn.progress import Progress, estimate_line, format_duration


class Clock:
    """A settable stand-in for time.perf_counter (the clock, not the reporter)."""

    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress_mod.time, "perf_counter", c)
    return c


def test_estimate_line():
    assert estimate_line(3.1, 2000) == "estimated 3.1 s/step, 1 h 43 min for 2000 steps"
    assert estimate_line(0.42, 100) == "estimated 0.42 s/step, 42 s for 100 steps"
    assert estimate_line(30.0, 2000) == "estimated 30 s/step, 16 h 40 min for 2000 steps"
    assert format_duration(3 * 86400 + 7200) == "3 d 2 h"
    assert format_duration(125) == "2 min 5 s"


def test_lines_when_not_a_terminal(clock):
    out = io.StringIO()
    with Progress(100, "train", every_s=30, stream=out) as p:
        assert not p.bar
        for _ in range(10):
            clock.t += 1.0
            p.update(loss=1.5e-3)          # 10 s in: no line yet (every 30 s)
        assert out.getvalue() == ""
        clock.t += 30.0
        p.update(loss=1.25e-3, val=2.5e-3)  # 40 s, 11 steps: a line
        p.write("checkpoint saved")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    rate = 11 / 40
    assert lines[0].startswith("train: 11/100 steps (11%), loss 0.00125, val 0.0025 | ")
    assert f"{1 / rate:.2g} s/step" in lines[0]
    assert f"ETA {format_duration(89 / rate)}" in lines[0]
    assert lines[1] == "checkpoint saved"
    assert lines[2].startswith("train: 11/100 steps (11%)") and "40 s in all" in lines[2]


def test_bar_off_still_reports_and_none_silences(clock):
    out = io.StringIO()
    with Progress(4, "import", enabled=False, every_s=0, stream=Tty()) as p:
        p.stream = out   # a terminal, but the bar is off: lines
        for _ in range(4):
            clock.t += 0.5
            p.update()
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and lines[-2].startswith("import: 4/4 steps (100%)") and "2 steps/s" in lines[-2]
    quiet = io.StringIO()
    with Progress(4, "import", enabled=False, every_s=None, stream=quiet) as p:
        p.update(4)
    assert quiet.getvalue() == ""


def test_bar_on_a_terminal(clock):
    tty = Tty()
    p = Progress(50, "render", stream=tty, unit="frame")
    assert p.bar
    p.update(5, loss=0.5)
    p.write("hello")
    p.close()
    p.close()
    text = tty.getvalue()
    assert "render" in text and "hello" in text and "loss=0.5" in text and "50" in text
    assert "frames (" not in text          # no status lines under a bar


def test_resumed_run_counts_rate_from_initial(clock):
    out = io.StringIO()
    p = Progress(1000, "train", every_s=0, stream=out, initial=900)
    clock.t += 10.0
    p.update(10)
    assert "910/1000" in out.getvalue() and "1 steps/s" in out.getvalue() and "ETA 1 min 30 s" in out.getvalue()
