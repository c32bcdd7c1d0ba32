import math
import os
import re

import numpy as np
import pytest

from rnnjax import metrics
from rnnjax.metrics import MetricsError, MetricsLog


def records(n):
    return [{"epoch": e, "train_ppl": 20.0 / e, "val_ppl": 21.0 / e} for e in range(1, n + 1)]


def test_add_steps_sums_per_key_in_step_order_and_keeps_a_saved_sum_s_keys():
    call = {"loss_sum": np.array([1.0, 2.0]), "count": np.array([4.0, 4.0]),
            "grad_norm": np.array([0.5, 1.5])}
    sums = metrics.add_steps({}, [call, call])
    assert sums == {"loss_sum": 6.0, "count": 16.0, "grad_norm": 4.0}
    assert metrics.add_steps(sums, [call]) == {"loss_sum": 9.0, "count": 24.0, "grad_norm": 6.0}
    old = {"loss_sum": 1.0, "count": 4.0}                       # saved before grad_norm was a metric
    assert metrics.add_steps(old, [call]) == {"loss_sum": 4.0, "count": 12.0}
    val = {"loss_sum": 8.0, "count": 4.0, "hits": 3.0, "right_sum": 1.0}
    record = metrics.epoch_record(3, 30, {**sums, "right_sum": 4.0}, 4, val, 1.5)
    assert record["train_loss"] == 6.0 / 16.0 and record["grad_norm"] == 1.0
    assert record["train_right"] == 0.25 and "right_sum" not in record      # per token, as val_right
    assert record["val_ppl"] == np.exp(2.0) and record["val_hits"] == 3.0      # as the validation gives it
    assert record["val_right"] == 0.25 and "val_right_sum" not in record     # a <key>_sum: per token
    assert "val_count" not in record and "val_loss_sum" not in record


def test_append_read_and_truncate(tmp_path):
    log = MetricsLog(tmp_path / "run" / "metrics.jsonl")
    assert log.read(missing_ok=True) == []              # a new workdir's
    with pytest.raises(MetricsError, match=r"run/metrics.jsonl does not exist\.$"):     # a path mistyped
        log.read()
    for r in records(5):
        log.append(r)
    assert log.read() == records(5)
    log.truncate(3)                        # a run resumed from epoch 3 redoes 4 and 5
    assert log.read() == records(3)
    inode = os.stat(log.path).st_ino
    log.truncate(10)
    assert log.read() == records(3) and os.stat(log.path).st_ino == inode  # none dropped: not rewritten


def test_non_finite_values_are_null_in_the_file_and_read_back_as_nan_rnnjaxs_perplexities_as_inf(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"epoch": 1, "train_ppl": 3.0, "val_ppl": math.inf, "grad_norm": math.nan,
                "val_word_ppl": math.nan})                  # a validation's own: unknown, not diverged
    assert '"val_ppl": null' in log.path.read_text() and "Infinity" not in log.path.read_text()
    [record] = log.read()
    assert record["val_ppl"] == math.inf and math.isnan(record["grad_norm"]) and record["train_ppl"] == 3.0
    assert math.isnan(record["val_word_ppl"])


def test_only_the_writer_writes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    MetricsLog(path).append(records(2)[0])
    other = MetricsLog(path, writer=False)
    other.append(records(2)[1])
    other.truncate(0)
    assert MetricsLog(path).read() == records(1)


def test_a_binary_file_is_named_and_how_to_go_on(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"epoch": 1}\n\xff\xfe\x00')
    with pytest.raises(MetricsError, match=r"byte 0xff at offset 13 is not UTF-8\); move it aside to resume, "
                                           "or use a new workdir"):
        MetricsLog(path).read()


def test_a_workdir_given_for_its_log_is_named_and_its_log_too(tmp_path):
    """It was told to move the folder aside to resume."""
    (tmp_path / "metrics.jsonl").write_text("")
    said = rf"^{re.escape(str(tmp_path))} is a folder, a workdir: read its log, {re.escape(str(tmp_path))}/"
    with pytest.raises(MetricsError, match=said + r"metrics\.jsonl\.$"):
        MetricsLog(tmp_path, writer=False).read()


@pytest.mark.parametrize("line", ['{"epoch": 1, "train_ppl": 1, "val_ppl": 1, "run": []}', "[" * 200000])
def test_a_record_of_the_wrong_shape_or_nested_thousands_deep_is_named(tmp_path, line):
    """A list as the run gave "unhashable type: 'list'", deep brackets a RecursionError: tracebacks."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(MetricsError, match=r"metrics.jsonl, line 1, is not a metrics record"):
        MetricsLog(path).read()


def test_records_of_a_run_the_workdir_does_not_hold_are_named(tmp_path):
    """"run": 5 of two runs raised an IndexError as the run resumed; -1 and true were taken as runs."""
    two = [{**r, "run": k} for r in records(2) for k in (0, 1)]
    metrics.check_records_runs(two, 2, tmp_path / "m")
    metrics.check_records_runs(records(2), 0, tmp_path / "m")
    for recs, num_runs, says in ((two, 1, "record 2, is of run 1, and the workdir holds 1 run trained"),
                                 (two, 0, "record 1, is of run 0, and the workdir holds a single run"),
                                 (records(2), 2, "record 1, is of no run, and the workdir holds 2 runs")):
        with pytest.raises(MetricsError, match=says):
            metrics.check_records_runs(recs, num_runs, tmp_path / "m")
    for run in ("-1", "true"):
        path = tmp_path / f"{run}.jsonl"
        path.write_text(f'{{"epoch": 1, "train_ppl": 1, "val_ppl": 1, "run": {run}}}\n')
        with pytest.raises(MetricsError, match="line 1, is not a metrics record"):
            MetricsLog(path).read()


def test_perplexities_read_to_two_decimals_and_a_diverging_runs_in_three_digits():
    assert [metrics.ppl_text(x) for x in (7.2349, 28.0, 999999.0, 1.5e6, 3.4e38, math.inf)] == [
        "7.23", "28.00", "999999.00", "1.5e+06", "3.4e+38", "inf"]
