"""experiments.benchmark.corpus: its generated text, what a preparation reports (no timing here), its
argument checks."""

import json
import os

import pytest

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


@pytest.mark.parametrize("argv,message", [
    (["--sizes", "abc"], "--sizes must be whole numbers of MB from 1 to 4,096 separated by commas, got "
                         "'abc'"),
    (["--sizes", "-1"], "--sizes must be whole numbers of MB"),
    (["--sizes", "0"], "--sizes must be whole numbers of MB"),
    (["--tokens", "bogus"], "--tokens must be char, word or char,word, got 'bogus'"),
    (["--steps", "5"], "--steps must be a positive multiple of 10, the steps of a compiled call, got 5"),
    (["--steps", "19"], "--steps must be a positive multiple of 10"),     # ran 10, divided by 19
    (["--steps", "-10"], "--steps must be a positive multiple of 10"),
    (["--rounds", "0"], "--rounds must be at least 1, got 0"),
    (["--out", "a-file"], "--out must be a folder, got 'a-file'"),
    (["--out", "a-file/sub"], "--out must be a folder, got 'a-file/sub'"),
    (["--data", "missing.txt"], "missing.txt"),
])
def test_bad_arguments_are_one_line_before_any_text_is_made(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("")
    defaults = {"--sizes": "1", "--out": "out"}
    with pytest.raises(SystemExit) as e:
        bench.main([*(x for k, v in defaults.items() if k not in argv for x in (k, v)), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]        # nothing made


@pytest.mark.parametrize("name", ["corpus.json", "notes.md", "text-1mb.txt", "fifo/corpus.json",
                                  "folder/text-1mb.txt", "folder/text-1mb.sha1"])
def test_an_out_folder_holding_files_it_did_not_write_is_refused_and_kept(tmp_path, capsys, name):
    """corpus.json was written over, a text of one's own taken as the generated one or written over,
    without a word; a FIFO of that name hung the check; a folder of a text's name was a traceback."""
    (tmp_path / "out").mkdir()
    kind, _, name = name.rpartition("/")
    if kind == "fifo":
        os.mkfifo(tmp_path / "out" / name)
    elif kind == "folder":
        (tmp_path / "out" / name).mkdir()
    else:
        (tmp_path / "out" / name).write_text('{"mine": 1}')
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "1", "--out", str(tmp_path / "out")])
    assert capsys.readouterr().err.startswith(f"error: --out {tmp_path / 'out'} holds {name}, which this "
                                              "benchmark did not write; give a new or empty folder (or an "
                                              "earlier run's) (see python -m")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [name]
    if (tmp_path / "out" / name).is_file():
        assert (tmp_path / "out" / name).read_text() == '{"mine": 1}'


def test_a_text_is_made_once_and_made_again_if_changed(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "MB", 10_000)                 # 1 "MB": 10 kB
    path = tmp_path / "text-1mb.txt"
    assert bench.made(path, 1) and not bench.made(path, 1)
    first = path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text-1mb.sha1", "text-1mb.txt"]
    assert all(bench._ours(p) for p in tmp_path.iterdir())  # an earlier run's folder: used again
    (tmp_path / "corpus.json").write_text(json.dumps({"machine": "m", "prepare": {}, "train": {}}))
    assert bench._ours(tmp_path / "corpus.json")
    path.write_bytes(first[:-10])                            # cut short or edited: made again, as it was
    assert bench.made(path, 1) and path.read_bytes() == first
    (tmp_path / "text-1mb.sha1").unlink()                    # an earlier version's: beside its corpus.json
    assert bench._ours(path) and bench.made(path, 1) and not bench.made(path, 1)
    (tmp_path / "text-1mb.sha1").unlink()
    (tmp_path / "corpus.json").unlink()
    assert not bench._ours(path)                             # a text of one's own, it may be


def test_a_damaged_sha1_is_a_text_to_make_again(tmp_path, monkeypatch):
    """Bytes that are not text in text-1mb.sha1 were a UnicodeDecodeError."""
    monkeypatch.setattr(bench, "MB", 10_000)
    path = tmp_path / "text-1mb.txt"
    bench.made(path, 1)
    (tmp_path / "text-1mb.sha1").write_bytes(b"\xff\xfe")
    assert bench.made(path, 1) and not bench.made(path, 1)
