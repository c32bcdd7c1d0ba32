"""The benchmark script runs end to end (with tiny repetition counts: no timing is checked here), and its
report reads right."""

import json

import pytest

from experiments import benchmark
from experiments.benchmark import sizes
from experiments.benchmark.contenders import Contender, Setting
from experiments.benchmark.measure import measure_steps
from experiments.benchmark.report import ratio_lines, sizes_table
from rnnjax import kernels


@pytest.mark.slow
def test_benchmark_smoke(real_text_path, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert benchmark.main(["--data", real_text_path, "--rounds", "1", "--steps", "2", "--recipe-rounds", "0",
                           "--devices", "1", "--runs", "2", "--json", str(out), "--out", str(tmp_path)]) == 0
    result = json.loads(out.read_text())
    names = set(result["contenders"])
    torch = {"torch d2l", "torch lean"}
    assert {"rnnjax", "flax"} <= names and (torch <= names) == benchmark.torch_available()
    for r in result["contenders"].values():
        assert r["ms_per_step"] > 0 and r["tokens_per_s"] > 0 and r["gflops"] > 0 and r["compile_s"] > 0
    assert result["ratio_step_vs_flax"] > 0
    assert ("ratio_step_vs_torch_lean" in result) == benchmark.torch_available()
    assert result["machine"]["backend"] == "cpu" and result["machine"]["versions"]["jaxlib"]
    assert result["generation"]["ratio"] > 1
    assert result["compile_cache"]["warm_cache_s"] > 0
    runs = result["runs"]                                    # --runs 2: two seeds in one program
    assert runs["num_runs"] == 2 and runs["ratio_vs_sequential"] > 0 and runs["ms_per_step_all"] > 0
    out = capsys.readouterr().out
    assert "rnnjax's step is" in out and "2 seeds in one program: a step of all of them is" in out


def test_flop_count_matches_the_matmuls():
    H, V = 32, 28
    forward = 2 * H * H + 2 * H * V          # recurrence and output layer, per token
    assert benchmark.model_flops_per_token(H, V) == 3 * forward
    # Two GRU layers: three gates in the first layer's recurrence and in both matmuls of the second.
    assert benchmark.model_flops_per_token(H, V, "gru", 2) == 3 * (2 * 3 * H * H * 3 + 2 * H * V)


def test_a_ratio_below_one_reads_as_slower():
    assert benchmark.speed_words(1.47) == "1.47x faster"
    assert benchmark.speed_words(0.68) == "1.47x slower"
    assert benchmark.speed_words(1.001) == "as fast"
    size = {"label": "lstm 512/512/64", "auto_kernel": "fused",
            "ratios": {"torch lean": 0.5, "flax": 2.0, "rnnjax plain": 0.999}}
    assert ratio_lines(size) == "lstm 512/512/64: rnnjax (fused) is 2.00x slower than torch lean, 2.00x " \
                                "faster than flax, as fast as rnnjax plain"


def test_the_gpu_sizes_are_issue_26s_table():
    assert [s.label for s in sizes.settings("gpu")] == [
        "rnn 32/1024/32", "gru 32/1024/32", "lstm 32/1024/32", "gru 32/1024/32 x2", "rnn 512/1024/32",
        "lstm 512/512/64", "lstm 1024/256/64 x2"]
    # The small set has every cell, and depth too.
    small = sizes.settings("small")
    assert {s.cell for s in small} == {"rnn", "gru", "lstm"} and max(s.num_layers for s in small) == 2


def test_every_kernel_that_can_train_a_size_contends_and_cudnn_is_a_gpu_lstm():
    lstm, gru = Setting(cell="lstm"), Setting(cell="gru", num_layers=2)
    assert sizes.applicable_kernels(lstm, "gpu") == ["plain", "fused", "hoisted", "cudnn"]
    assert sizes.applicable_kernels(lstm, "cpu") == ["plain", "fused", "hoisted"]
    assert sizes.applicable_kernels(gru, "gpu") == ["plain", "fused", "hoisted"]
    names = [c.name for c in sizes.contenders_at(lstm, 1, "gpu")]
    assert names[:5] == [f"rnnjax {k}" for k in kernels.KERNELS] + ["flax"]
    assert ("torch lean" in names and "torch d2l" in names) == benchmark.torch_available()


class _Fake(Contender):
    def __init__(self, name, fail=False):
        self.name, self.fail, self.ran = name, fail, 0

    def prepare(self, s, data):
        if self.fail:
            raise RuntimeError("no such kernel on this backend\nmore detail")
        return 0.01

    def steps(self, n):
        self.ran += n


def test_a_contender_that_fails_is_recorded_and_the_others_are_measured(small_data):
    good, bad = _Fake("good"), _Fake("bad", fail=True)
    s = Setting(batch_size=small_data.batch_size, num_steps=small_data.num_steps)
    res = measure_steps([bad, good], s, small_data, rounds=2, steps=3, warmup=1, log=lambda *_: None,
                        keep_going=True)
    assert res["bad"] == {"error": "RuntimeError: no such kernel on this backend"}
    assert good.ran == 1 + 2 * 3 and len(res["good"]["rounds_ms"]) == 2 and res["good"]["ms_per_step"] >= 0
    with pytest.raises(RuntimeError):
        measure_steps([bad], s, small_data, rounds=1, steps=1, log=lambda *_: None)
    table = sizes_table([{"label": "rnn 32/64/16", "auto_kernel": "fused", "contenders": res}])
    assert "failed" in table and f"{res['good']['ms_per_step']:.2f}" in table
