"""experiments.benchmark.corpus: its generated text and what a preparation reports (no timing here)."""

from experiments.benchmark import corpus as bench


def test_generated_text_is_utf8_of_the_size_asked_with_another_alphabet(tmp_path):
    path = tmp_path / "t.txt"
    bench.generate(path, 50_000, seed=1)
    text = path.read_bytes().decode("utf-8")
    assert 49_000 < path.stat().st_size <= 50_000
    assert {"\n", ",", "."} <= set(text) and set(text) & set("éüßøñж") and any(c.isupper() for c in text)


def test_prepare_reports_the_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNJAX_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "t.txt"
    bench.generate(path, 20_000)
    r = bench.prepare(str(path), "char")
    assert r["tokens"] == len(path.read_text(encoding="utf-8")) and not r["cache_hit"]
    assert r["peak_rss_mb"] >= r["rss_before_mb"] > 0 and r["seconds"] > 0
    assert bench.prepare(str(path), "char")["cache_hit"]
