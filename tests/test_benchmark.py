"""The benchmark script runs end to end (with tiny repetition counts: no timing is checked here)."""

import json

import pytest

from experiments import benchmark


@pytest.mark.slow
def test_benchmark_smoke(real_text_path, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert benchmark.main(["--data", real_text_path, "--rounds", "1", "--steps", "2", "--recipe-rounds", "0",
                           "--devices", "1", "--runs", "2", "--json", str(out), "--out", str(tmp_path)]) == 0
    result = json.loads(out.read_text())
    names = set(result["contenders"])
    assert {"rnnjax", "flax"} <= names and ("torch" in names) == benchmark.torch_available()
    for r in result["contenders"].values():
        assert r["ms_per_step"] > 0 and r["tokens_per_s"] > 0 and r["gflops"] > 0 and r["compile_s"] > 0
    assert result["ratio_step_vs_flax"] > 0
    assert result["generation"]["ratio"] > 1
    assert result["compile_cache"]["warm_cache_s"] > 0
    runs = result["runs"]                                    # --runs 2: two seeds in one program
    assert runs["num_runs"] == 2 and runs["ratio_vs_sequential"] > 0 and runs["ms_per_step_all"] > 0
    out = capsys.readouterr().out
    assert "rnnjax's step is" in out and "2 seeds in one program: a step of all of them" in out


def test_flop_count_matches_the_matmuls():
    H, V = 32, 28
    forward = 2 * H * H + 2 * H * V          # recurrence and output layer, per token
    assert benchmark.model_flops_per_token(H, V) == 3 * forward
    # Two GRU layers: three gates in the first layer's recurrence and in both matmuls of the second.
    assert benchmark.model_flops_per_token(H, V, "gru", 2) == 3 * (2 * 3 * H * H * 3 + 2 * H * V)
