"""Tests for cli_progress: progress bars for patients and stages on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io

from msvol.cli_progress import RunDisplay
from msvol.ops.events import Event

MESSAGES = ["[1/2] sub-01", "sub-01 ses-01: preprocessing", "sub-01 ses-01: segmenting lesions",
            "sub-01 ses-01: done in 3 s", "[2/2] sub-02", "sub-02 ses-01: preprocessing"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_two_bars_count_patients_and_the_stages_of_each():
    stream = Terminal()
    display = RunDisplay(stream=stream)
    assert display.interactive
    display.progress(MESSAGES[0])
    display.event(Event("sub-01", "running", exam="sub-01/ses-01", stages=3))
    for message in MESSAGES[1:]:
        display.progress(message)
    display.close()
    shown = stream.getvalue()
    assert "patients" in shown and "2/2" in shown, "the patients bar, finished at the end"
    assert "sub-01" in shown and "3/3" in shown, "the stages bar of sub-01 counted against its announced total"
    assert "\r" in shown and "sub-01 ses-01: preprocessing\n" not in shown, "bars, not lines"


def test_without_a_terminal_every_message_is_one_plain_line():
    stream = io.StringIO()
    display = RunDisplay(stream=stream)
    assert not display.interactive
    for message in MESSAGES:
        display.progress(message)
    display.event(Event("sub-01", "running", stages=3))
    display.close()
    assert stream.getvalue() == "".join(f"{message}\n" for message in MESSAGES)


def test_quiet_shows_nothing_even_on_a_terminal():
    stream = Terminal()
    display = RunDisplay(quiet=True, stream=stream)
    for message in MESSAGES:
        display.progress(message)
    display.close()
    assert stream.getvalue() == ""
