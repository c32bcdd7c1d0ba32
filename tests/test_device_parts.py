"""The device check's parts, each recorded as it ran: passed, failed, timed out, skipped or cut short."""

import json
import signal
import sys
import threading
import time

import pytest

from experiments import device_parts, device_summary


def test_a_failing_part_is_recorded_and_the_next_one_runs(tmp_path):
    summary = {"parts": {}}
    parts = device_parts.Parts(tmp_path, summary, budget_s=100, quick=True,
                               timeouts={"fast": (10, 10), "short": (1, 1)})
    failed = parts.run("fails", "fast", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"], {})
    assert not failed["ok"] and failed["returncode"] == 3 and failed["error"] == "exit status 3: boom"
    killed = parts.run("killed", "fast", [sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"], {})
    assert killed["returncode"] == -9 and killed["error"] == "killed by signal 9: (no output)"
    t0 = time.monotonic()
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)     # as in a script's background job: the part
    try:                                                        # still stops at the Ctrl-C, not the SIGKILL
        hung = parts.run("hangs", "short", [sys.executable, "-c", "import time; time.sleep(60)"], {})
    finally:
        signal.signal(signal.SIGINT, ignored)
    assert not hung["ok"] and hung["error"] == "timed out after 1 s" and time.monotonic() - t0 < 20
    ok = parts.run("works", "fast", [sys.executable, "-c", "print('fine')"], {})
    assert ok["ok"] and (tmp_path / "works.log").read_text() == "fine\n"
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert list(on_disk["parts"]) == ["fails", "killed", "hangs", "works"] and on_disk["parts"]["works"]["ok"]
    late = device_parts.Parts(tmp_path, {"parts": {}}, budget_s=1, quick=True).run(
        "late", "tests", [sys.executable, "-c", ""], {})
    assert late == {"ok": False, "skipped": True, "error": "skipped: the --budget ran out"}
    assert not (tmp_path / "late.log").exists()


def test_a_part_the_budget_skipped_is_reported_as_skipped_not_failed(tmp_path):
    summary = {"parts": {"recipe-warm": {"ok": False, "error": "exit status 1: boom"}}}
    device_parts.Parts(tmp_path, summary, budget_s=1, quick=True).run("recipe-cold", "recipe", [], {})
    assert json.loads((tmp_path / "summary.json").read_text())["parts"]["recipe-cold"]["skipped"] is True
    summary.update(seconds=8.0, backend="cpu", device_kind="cpu", recipe={"epochs": 3})
    text = device_summary.report(summary)
    assert "parts: recipe-warm FAILED, recipe-cold skipped" in text
    assert "recipe (3 epochs): cold skipped, warm failed\n" in text and "None" not in text


def test_a_part_the_budget_stops_is_cut_short_not_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(device_parts.Parts, "least_s", 0.5)
    summary = {"parts": {}}
    parts = device_parts.Parts(tmp_path, summary, budget_s=1, quick=True, timeouts={"recipe": (60, 60)})
    parts.run("recipe-cold", "recipe", [sys.executable, "-c", "import time; time.sleep(60)"], {})
    cut = summary["parts"]["recipe-cold"]
    assert not cut["ok"] and cut["cut"] and cut["error"].startswith("cut short by the --budget after")
    summary.update(seconds=8.0, backend="cpu", device_kind="cpu", recipe={"epochs": 3})
    text = device_summary.report(summary)
    assert "parts: recipe-cold cut short" in text
    assert "recipe (3 epochs): cold cut short, warm not run" in text


@pytest.mark.parametrize("heeds_ctrl_c, gap_s", [(True, None), (False, 1.0), (False, 0.0)])
def test_a_signal_stops_the_running_part_and_no_other_starts(tmp_path, heeds_ctrl_c, gap_s):
    """The handler only notes the signal: raised there, an exception can land in ``Popen.wait`` holding the
    Popen's lock, and the part's next wait hangs (the device check once hung so). ``run`` stops the part
    at the Ctrl-C it sends, or, for a part that ignores it, at a second signal (one at once after the first
    had the part's SIGKILL recorded as its failure, "exit status -9"); then it raises ``Stopped``."""
    summary = {"parts": {}}
    parts = device_parts.Parts(tmp_path, summary, budget_s=100, quick=True, timeouts={"t": (60, 60)})
    ignore = "" if heeds_ctrl_c else "signal.signal(signal.SIGINT, signal.SIG_IGN); "
    hang = [sys.executable, "-c", f"import signal, time; {ignore}print('ready', flush=True); time.sleep(60)"]
    log = tmp_path / "hangs.log"

    def signals():
        deadline = time.monotonic() + 30
        while not (log.is_file() and log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        parts.on_signal(signal.SIGTERM, None)
        if gap_s is not None:
            time.sleep(gap_s)
            parts.on_signal(signal.SIGINT, None)       # the second: SIGKILL, not _stop's 20 s of grace
    sender = threading.Thread(target=signals)
    sender.start()
    t0 = time.monotonic()
    with pytest.raises(device_parts.Stopped) as stopped:
        parts.run("hangs", "t", hang, {})
    sender.join()
    assert stopped.value.signum == signal.SIGTERM and time.monotonic() - t0 < 15
    record = summary["parts"]["hangs"]
    assert record["error"] == "stopped by signal 15" and record["stopped"] and not record["ok"]
    assert json.loads((tmp_path / "summary.json").read_text())["parts"]["hangs"]["stopped"]
    assert parts.on_signal(signal.SIGTERM, None) is None        # a third: nothing runs, nothing raised
    with pytest.raises(device_parts.Stopped):
        parts.run("next", "t", [sys.executable, "-c", ""], {})
    assert "next" not in summary["parts"] and not (tmp_path / "next.log").exists()
