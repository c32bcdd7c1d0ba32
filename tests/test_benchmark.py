"""The benchmark script runs end to end (with tiny repetition counts: no timing is checked here), and its
report reads right."""

import importlib.abc
import json
import sys

import pytest

from experiments import benchmark
from experiments.benchmark import sizes, torch_contenders
from experiments.benchmark.contenders import Contender, Setting
from experiments.benchmark.measure import machine_info, measure_steps
from experiments.benchmark.report import ratio_lines, sizes_table


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


def test_a_benchmark_cut_short_keeps_what_it_measured(small_data, tmp_path, monkeypatch):
    """bench.json is written after each part: a run stopped in the compile-cache part keeps the step table."""
    bench_main = sys.modules["experiments.benchmark.main"]      # the module: the package exports main()
    monkeypatch.setattr(bench_main, "TimeMachine", lambda *a, **k: small_data)
    monkeypatch.setattr(bench_main, "contenders_for", lambda args, one_device_too: [])
    step = {"ms_per_step": 1.5, "ms_per_step_min": 1.4, "ms_per_step_max": 1.6, "compile_s": 2.0,
            "tokens_per_s": 1e6, "gflops": 3.0}          # measure_steps's fields; no timing is checked
    monkeypatch.setattr(bench_main, "measure_steps", lambda *a: {"rnnjax": dict(step)})

    def cut(data):
        raise KeyboardInterrupt
    monkeypatch.setattr(bench_main, "measure_compile_cache", cut)
    with pytest.raises(KeyboardInterrupt):
        benchmark.main(["--recipe-rounds", "0", "--out", str(tmp_path)])
    kept = json.loads((tmp_path / "bench.json").read_text())
    assert kept["contenders"] == {"rnnjax": step} and "compile_cache" not in kept


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


def test_the_gpu_sizes_are_issue_26s_table_the_largest_first():
    """A bench the time cuts keeps the sizes it finished: the 2-layer LSTM 1024 (issue 26's targets) and the
    LSTM 512 come first."""
    assert [s.label for s in sizes.settings("gpu")] == [
        "lstm 1024/256/64 x2", "lstm 512/512/64", "rnn 32/1024/32", "gru 32/1024/32", "lstm 32/1024/32",
        "gru 32/1024/32 x2", "rnn 512/1024/32"]
    # The small set has every cell, and depth too, the 2-layer LSTM first as in the gpu set.
    small = sizes.settings("small")
    assert {s.cell for s in small} == {"rnn", "gru", "lstm"} and small[0].num_layers == 2
    # bfloat16 at the large LSTMs (and the small set's, so that --quick runs it), each a size of its set.
    assert sizes.BFLOAT16_AT["gpu"] == {"lstm 1024/256/64 x2", "lstm 512/512/64"}
    for name, labels in sizes.BFLOAT16_AT.items():
        assert labels and labels <= {s.label for s in sizes.settings(name)}, name


def test_every_kernel_that_can_train_a_size_contends_and_cudnn_is_a_gpu_lstm_measured_last():
    lstm, gru = Setting(cell="lstm"), Setting(cell="gru", num_layers=2)
    assert sizes.applicable_kernels(lstm, "gpu") == ["plain", "fused", "hoisted", "cudnn"]
    assert sizes.applicable_kernels(lstm, "cpu") == ["plain", "fused", "hoisted"]
    assert sizes.applicable_kernels(gru, "gpu") == ["plain", "fused", "hoisted"]
    torch = ["torch lean", "torch d2l"] if benchmark.torch_available() else []
    names = [c.name for c in sizes.contenders_at(lstm, 1, "gpu")]
    assert names == ["rnnjax plain", "rnnjax fused", "rnnjax hoisted", "flax", *torch, "rnnjax cudnn"]
    bf16 = sizes.contenders_at(lstm, 1, "gpu", bfloat16=True)
    assert [c.name for c in bf16] == names[:3] + [sizes.BF16] + names[3:]
    assert bf16[3].overrides == {"kernel": "hoisted", "compute_dtype": "bfloat16"}
    assert "rnnjax cudnn" not in [c.name for c in sizes.contenders_at(lstm, 1, "cpu", bfloat16=True)]


def test_bfloat16s_ratio_is_hoisted_float32s_step_over_its_own():
    ms = {"rnnjax plain": 4.0, "rnnjax hoisted": 3.0, sizes.BF16: 2.0, "flax": 6.0}
    size = {"auto_kernel": "hoisted", "contenders": {n: {"ms_per_step": v} for n, v in ms.items()}}
    size["contenders"]["rnnjax cudnn"] = {"error": "NotImplementedError: no"}
    assert sizes.ratios(size) == {"ratios": {"rnnjax plain": 4 / 3, sizes.BF16: 2 / 3, "flax": 2.0},
                                  "bf16_ratio": 1.5}
    size["auto_kernel"] = "fused"      # a CPU's: not measured here, so no ratios against it; bf16's stays
    assert sizes.ratios(size) == {"ratios": {}, "bf16_ratio": 1.5}
    size.update(sizes.ratios(size), label="lstm 48/32/16 x2")
    assert ratio_lines(size).endswith("; rnnjax hoisted in bfloat16 is 1.50x faster than in float32")
    del size["contenders"][sizes.BF16]
    assert "bf16_ratio" not in sizes.ratios(size)


class _Fake(Contender):
    def __init__(self, name, fail=False):
        self.name, self.fail, self.ran = name, fail, 0

    def prepare(self, s, data):
        if self.fail:
            raise RuntimeError("no such kernel on this backend\nmore detail")
        return 0.01

    def steps(self, n):
        self.ran += n


class _FailsInARound(_Fake):
    def steps(self, n):
        super().steps(n)
        if self.ran > 1:             # the warm-up passes
            raise RuntimeError("CUDA_ERROR_ILLEGAL_ADDRESS")


def test_a_contender_that_fails_in_a_round_is_recorded_and_the_others_go_on(small_data):
    good, bad = _Fake("good"), _FailsInARound("bad")
    s = Setting(batch_size=small_data.batch_size, num_steps=small_data.num_steps)
    res = measure_steps([bad, good], s, small_data, rounds=3, steps=2, warmup=1, log=lambda *_: None,
                        keep_going=True)
    assert res["bad"] == {"error": "RuntimeError: CUDA_ERROR_ILLEGAL_ADDRESS"} and bad.ran == 3
    assert good.ran == 1 + 3 * 2 and len(res["good"]["rounds_ms"]) == 3
    with pytest.raises(RuntimeError):
        measure_steps([_FailsInARound("bad")], s, small_data, rounds=1, steps=1, warmup=1,
                      log=lambda *_: None)


class _Cudnn(_Fake):
    """Reads bench.json as it starts: what a crash of cuDNN's binding there would leave."""

    def __init__(self, json_path):
        super().__init__("rnnjax cudnn")
        self.json_path, self.saw = json_path, None

    def prepare(self, s, data):
        self.saw = json.loads(self.json_path.read_text())
        return super().prepare(s, data)


def test_run_sizes_writes_the_others_figures_before_cudnn_runs(small_data, tmp_path, monkeypatch):
    path = tmp_path / "bench.json"
    cudnn = _Cudnn(path)
    fakes = [_Fake("rnnjax hoisted"), _Fake(sizes.BF16), _Fake("flax"), cudnn]
    monkeypatch.setitem(sizes.SIZES, "tiny", [("lstm", 8, small_data.batch_size, small_data.num_steps, 2)])
    monkeypatch.setitem(sizes.ROUNDS, "tiny", (2, 3, 1))
    monkeypatch.setattr(sizes, "TimeMachine", lambda *args, **kwargs: small_data)
    monkeypatch.setattr(sizes, "contenders_at", lambda s, devices, backend, bfloat16: fakes)
    monkeypatch.setattr(sizes.kernels, "choose", lambda config, backend=None: "hoisted")
    out = sizes.run_sizes("tiny", None, path, log=lambda *_: None)
    before = cudnn.saw["sizes"][0]
    assert list(before["contenders"]) == ["rnnjax hoisted", sizes.BF16, "flax"]
    assert set(before["ratios"]) == {sizes.BF16, "flax"} and "bf16_ratio" in before
    after = json.loads(path.read_text())
    assert after == out and list(after["sizes"][0]["contenders"]) == [f.name for f in fakes]
    assert set(after["sizes"][0]["ratios"]) == {sizes.BF16, "flax", "rnnjax cudnn"}
    assert all(f.ran == 1 + 2 * 3 for f in fakes)


def test_a_broken_torch_is_reported_and_the_bench_goes_on(monkeypatch):
    """Not only ImportError: a torch whose CUDA libraries do not load raises OSError as it is imported."""
    class Broken(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                raise OSError("libcudnn.so.9: cannot open shared object file")

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    assert torch_contenders.torch_problem() == "OSError: libcudnn.so.9: cannot open shared object file"
    assert not benchmark.torch_available() and torch_contenders.torch_precision() == {}
    info = machine_info()
    assert info["torch_error"].startswith("OSError") and info["torch_device"] is None
    names = [c.name for c in sizes.contenders_at(Setting(cell="lstm"), 1, "cpu")]
    assert names == ["rnnjax plain", "rnnjax fused", "rnnjax hoisted", "flax"]


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
