"""``experiments.device_summary``: the figures read back from what the parts wrote, and the report's words."""

import builtins
import errno
import io
import json
import math
import os

import pytest

from experiments import device_summary


def test_counts_come_from_pytests_junit_xml(tmp_path):
    """As pytest writes it, also when stopped by Ctrl-C (the test it interrupted: a case with no name)."""
    xml = tmp_path / "tests.xml"
    xml.write_text("""<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="1"
        failures="1" skipped="1" tests="5"><testcase classname="tests.test_a" name="test_ok" time="0.1"/>
        <testcase classname="tests.test_a" name="test_ok2" time="0.1"/><testcase time="0.000" />
        <testcase classname="tests.test_a" name="test_bad" time="0.1"><failure message="x">x</failure>
        </testcase>
        <testcase classname="tests.test_b" name="test_err" time="0.1"><error message="e">e</error></testcase>
        <testcase classname="tests.test_b" name="test_skip" time="0.0"><skipped message="s"/></testcase>
        <testcase classname="" name="tests.test_c" time="0.0"><error message="i">no numpy</error></testcase>
        </testsuite></testsuites>""")
    assert device_summary.count_tests(xml) == {"passed": 2, "failed": 3, "skipped": 1, "failed_tests": [
        "tests.test_a::test_bad", "tests.test_b::test_err", "tests.test_c"]}     # the last: not collected


def test_final_val_ppl_is_each_runs_last_epoch(tmp_path):
    rows = [{"epoch": 1, "run": 0, "val_ppl": 9.0}, {"epoch": 1, "run": 1, "val_ppl": 8.0},
            {"epoch": 2, "run": 0, "val_ppl": 7.0}, {"epoch": 2, "run": 1, "val_ppl": None}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert device_summary.final_val_ppl(tmp_path) == [7.0, math.inf]


def test_the_report_says_its_units():
    summary = {"backend": "gpu", "device_kind": "H200", "seconds": 300.0, "parts": {"recipe": {"ok": True}},
               "recipe": {"epochs": 100, "cold_s": 12.5, "warm_s": 3.25, "val_ppl": 7.31234},
               "seeds": {"epochs": 100, "cold_s": 14.0, "val_ppl": [7.3, 7.456]},
               "sizes": {"d2l": {"auto_kernel": "fused", "ms_per_step": {"fused": 1.5, "plain": "OOM"}}}}
    text = device_summary.report(summary)
    assert "recipe (100 epochs): cold 12.5 s, warm 3.2 s, val ppl 7.31\n" in text
    assert "seeds (100 epochs): cold 14.0 s, warm not run, val ppl 7.30, 7.46\n" in text
    assert "ms per step" in text and "fused 1.50 ms  plain failed  (auto: fused)" in text
    assert "nan" not in text and "None" not in text
    del summary["seeds"]
    assert "seeds: not run" in device_summary.report(summary)
    del summary["recipe"]["warm_s"]
    assert "recipe (100 epochs): cold 12.5 s, warm not run" in device_summary.report(summary)
    summary["parts"]["recipe-warm"] = {"ok": False, "error": "exit status 1: boom"}
    assert "recipe (100 epochs): cold 12.5 s, warm failed" in device_summary.report(summary)


def test_the_machine_line_says_torch_is_not_installed_rather_than_none():
    info = {"backend": "cpu", "device_kind": "cpu", "torch_device": None,
            "versions": {"python": "3.11.7", "jax": "0.10.2", "torch": None}}
    assert device_summary.describe_machine(info) == ("backend cpu, cpu; torch not installed; python 3.11.7, "
                                                     "jax 0.10.2")
    info.update(torch_device="NVIDIA H200", versions={"jax": "0.10.2", "torch": "2.5.1"})
    assert device_summary.describe_machine(info) == ("backend cpu, cpu; torch on NVIDIA H200; jax 0.10.2, "
                                                     "torch 2.5.1")
    info.update(torch_device=None, torch_error="OSError: libcudnn.so.9: cannot open shared object file")
    assert device_summary.describe_machine(info) == (
        "backend cpu, cpu; torch 2.5.1 installed but not importable (OSError: libcudnn.so.9: cannot open "
        "shared object file); jax 0.10.2, torch 2.5.1")
    failed = {"parts": {"info": {"ok": False, "error": "exit status 1: ImportError: jax"}}}
    assert "None" not in device_summary.describe_machine(failed)


def test_what_a_stopped_part_wrote_is_read_back(tmp_path):
    """pytest stopped after writing its results, the benchmark after one size: both are kept."""
    (tmp_path / "tests.xml").write_text('<testsuites><testsuite><testcase classname="t" name="a"/>'
                                        '<testcase classname="t" name="b"><failure/></testcase></testsuite>'
                                        '</testsuites>')
    size = {"label": "rnn 32/64/16", "auto_kernel": "fused", "ratios": {"flax": 2.0},
            "contenders": {"rnnjax fused": {"ms_per_step": 0.4}, "flax": {"error": "OOM"}}}
    (tmp_path / "bench.json").write_text(json.dumps({"sizes": [size]}))
    summary = {"parts": {"tests": {"ok": False, "stopped": True}, "bench": {"ok": False, "stopped": True}}}
    device_summary.read_back(tmp_path, summary)
    assert summary["parts"]["tests"] == {"ok": False, "stopped": True, "passed": 1, "failed": 1,
                                         "skipped": 0, "failed_tests": ["t::b"]}
    assert summary["sizes"] == {"rnn 32/64/16": {
        "auto_kernel": "fused", "ratios": {"flax": 2.0}, "ms_per_step": {"rnnjax fused": 0.4, "flax": "OOM"},
        "step_mb": {"rnnjax fused": None, "flax": None}}}
    assert summary["parts"]["bench"]["sizes_done"] == 1
    passed = {"parts": {"tests": {"ok": True, "returncode": 0}}}
    (tmp_path / "tests.xml").write_text('<testsuites><testsuite><testcase classname="t" name="a"/>'
                                        '</testsuite></testsuites>')
    device_summary.read_back(tmp_path, passed)
    tests = passed["parts"]["tests"]
    assert tests["ok"] and tests["passed"] == 1 and "sizes" not in passed


def test_a_killed_pytests_counts_come_from_its_log(tmp_path):
    """Killed (SIGKILL after the Ctrl-C's grace) pytest writes no JUnit XML, or part of it: its output says
    what ran, from its totals line if it got to print one, else from its progress characters."""
    log = tmp_path / "tests.log"
    log.write_text("bringing up nodes...\n..F.s...........x....  [ 10%]\n.....E.ss.\n")
    assert device_summary.count_log(log) == {"passed": 25, "failed": 2, "skipped": 4, "failed_tests": [],
                                             "counted_from": "tests.log"}
    log.write_text("....F [100%]\n!!! KeyboardInterrupt !!!\nFAILED tests/test_a.py::test_bad - assert 0\n"
                   "ERROR tests/test_b.py::test_err\n"
                   "1 failed, 221 passed, 41 skipped, 50 deselected, 1 error, 2 xfailed in 239.78s\n")
    assert device_summary.count_log(log) == {
        "passed": 221, "failed": 2, "skipped": 43, "counted_from": "tests.log",
        "failed_tests": ["tests/test_a.py::test_bad", "tests/test_b.py::test_err"]}
    summary = {"parts": {"tests": {"ok": False, "cut": True, "log": "tests.log"}}}
    (tmp_path / "tests.xml").write_text('<testsuites><testsuite><testcase classname="t" name="a"/><testca')
    device_summary.read_back(tmp_path, summary)                     # cut off as it was written
    assert summary["parts"]["tests"]["passed"] == 221
    assert summary["parts"]["tests"]["counted_from"] == "tests.log"
    (tmp_path / "tests.xml").unlink()                                 # or not written at all
    summary = {"parts": {"tests": {"ok": False, "cut": True, "log": "tests.log"}}, "seconds": 1.0}
    device_summary.read_back(tmp_path, summary)
    tests = summary["parts"]["tests"]
    assert tests["failed"] == 2 and not tests["ok"]
    assert "tests: 221 passed, 2 failed, 43 skipped (from tests.log: no whole tests.xml): tests/test_a.py" \
        in device_summary.report(summary)
    skipped = {"parts": {"tests": {"ok": False, "skipped": True}}}        # no log: nothing to count
    log.unlink()
    device_summary.read_back(tmp_path, skipped)
    assert skipped == {"parts": {"tests": {"ok": False, "skipped": True}}}


def test_bfloat16s_ratio_and_memory_reach_the_summary_and_its_report(tmp_path):
    sizes = [{"label": "lstm 48/32/16 x2", "auto_kernel": "fused", "ratios": {"rnnjax hoisted bf16": 1.2},
              "bf16_ratio": 1.25, "memory_ratios": {"rnnjax hoisted": 1.5},
              "contenders": {"rnnjax fused": {"ms_per_step": 2.0, "step_mb": 2.0},
                             "rnnjax hoisted": {"ms_per_step": 3.0, "step_mb": 3.0},
                             "rnnjax hoisted bf16": {"ms_per_step": 2.4}}},
             {"label": "rnn 32/64/16", "auto_kernel": "fused", "ratios": {},
              "contenders": {"rnnjax fused": {"ms_per_step": 0.5}}}]
    (tmp_path / "bench.json").write_text(json.dumps({"sizes": sizes}))
    summary = {"parts": {"bench": {"ok": True}}, "seconds": 9.0}
    device_summary.read_back(tmp_path, summary)
    lstm = summary["sizes"]["lstm 48/32/16 x2"]
    assert lstm["bf16_ratio"] == 1.25 and lstm["memory_ratios"] == {"rnnjax hoisted": 1.5}
    assert lstm["step_mb"] == {"rnnjax fused": 2.0, "rnnjax hoisted": 3.0, "rnnjax hoisted bf16": None}
    assert "bf16_ratio" not in summary["sizes"]["rnn 32/64/16"]
    text = device_summary.report(summary)
    assert "(auto: fused; hoisted in bf16 at 1.25x float32's speed)" in text and "(auto: fused)" in text


def test_a_bench_json_cut_off_mid_write_is_noted_not_a_traceback(tmp_path):
    """The benchmark, on a full disk, may leave part of its bench.json: the check goes on without it."""
    (tmp_path / "bench.json").write_text('{"sizes": [{"label": "rnn')
    summary = {"parts": {"bench": {"ok": False, "returncode": 1}}, "seconds": 1.0}
    device_summary.read_back(tmp_path, summary)
    assert summary["parts"]["bench"]["bench_json"] == "not whole JSON" and "sizes" not in summary
    assert "ms per step" not in device_summary.report(summary)


def test_summary_json_is_written_whole_or_left_as_it_was(tmp_path, monkeypatch):
    device_summary.write_summary(tmp_path, {"parts": {"info": {"ok": True}}})
    real_open = io.open

    def full_disk(file, mode="r", *args, **kwargs):     # the file is made (or emptied), its write fails
        f = real_open(file, mode, *args, **kwargs)
        ours = isinstance(file, (str, os.PathLike)) and os.path.dirname(file) == str(tmp_path)
        if ours and "r" not in mode:
            f.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return f
    monkeypatch.setattr(io, "open", full_disk)
    monkeypatch.setattr(builtins, "open", full_disk)
    with pytest.raises(device_summary.NotWritten) as e:
        device_summary.write_summary(tmp_path, {"parts": {}})
    monkeypatch.undo()
    path = tmp_path / "summary.json"
    assert str(e.value).startswith(f"{path} cannot be written (No space left on device);")
    assert json.loads((tmp_path / "summary.json").read_text()) == {"parts": {"info": {"ok": True}}}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
