import math

import numpy as np

from conftest import TINY
from rnnjax import checkpoint, start
from rnnjax.runs import create_run_states
from rnnjax.stops import StoppedRuns
from rnnjax.writer import Writer

CONFIGS = [TINY.replace(seed=s) for s in (0, 1)]


def test_an_epoch_of_runs_stops_one_that_diverged_logs_its_last_record_and_saves_each_run_s_val(
        small_data, tmp_path):
    said = []
    with start.planned(CONFIGS[0], small_data, tmp_path, devices=1, runs=CONFIGS) as p:
        manager, log = start.open_workdir(p, small_data, keep=3)
        stops = StoppedRuns(CONFIGS, [], said.append, True)
        out = Writer(p, small_data, manager, log, stops, small_data.num_batches(True))
        sums = [{"loss_sum": 2.0 * 100, "count": 100.0}, {"loss_sum": 1000.0 * 100, "count": 100.0}]
        val = {"loss_sum": np.array([210.0, 900.0]), "count": np.array([100.0, 100.0])}
        records = out.records(0, 13, sums, val, 1.0)
        assert [r["run"] for r in records] == [0] and stops.live == [0]
        assert said == [f"run 1 (seed 1) stopped: {stops.why[1]}; 1 run(s) train on."]
        assert [(r["run"], r["stopped"]) for r in log.read()] == [(1, stops.why[1])]   # run 0's: the loop's
        out.save(p.dp.replicate(create_run_states(CONFIGS, len(small_data.vocab))), 0, 0, [{}, {}],
                 records + [{"run": 1, "val_ppl": math.inf}])
        checkpoint.check_saved(manager)
        manager.close()
    meta = checkpoint.read_meta(tmp_path, 0)
    assert meta["run_val_ppls"] == [math.exp(2.1), None] and out.saved == 0
    assert meta["position"]["batch"] == 0 and meta["position"]["stopped"] == stops.why
