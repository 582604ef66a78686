"""The progress line gives an ETA once the total number of uploads is known."""

from __future__ import annotations

import io

from fedsim.runtime.callbacks import Progress
from fedsim.tracking import ProgressPrinter, eta_seconds, format_duration


def test_format_duration():
    assert format_duration(0) == "0s"
    assert format_duration(44.6) == "45s"
    assert format_duration(80) == "1m20s"
    assert format_duration(65) == "1m05s"
    assert format_duration(2 * 3600 + 5 * 60 + 9) == "2h05m"


def test_eta_seconds():
    assert eta_seconds(60, 240, 20.0) == 60.0
    assert eta_seconds(0, 240, 5.0) is None  # no rate yet
    assert eta_seconds(240, 240, 80.0) is None  # done


def _progress(uploads, wall, expected=240):
    return Progress(
        mode="async", rounds_done=[1, 2], uploads=uploads, expected_uploads=expected, sim_time=1.0, wall_time=wall
    )


def test_line_has_eta_from_the_federations_rate():
    printer = ProgressPrinter(stream=io.StringIO())
    assert "ETA" not in printer._line(_progress(0, 10.0))  # federation starts after 10 s of pretraining
    line = printer._line(_progress(60, 30.0))  # 60 uploads in 20 s: 180 left take 60 s
    assert line.endswith(" | ETA 1m00s"), line
    assert "ETA" not in ProgressPrinter(stream=io.StringIO())._line(_progress(5, 3.0, expected=None))
