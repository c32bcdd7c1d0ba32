"""experiments.benchmark.corpus: its generated text, what a preparation reports (no timing here), its
argument checks."""

import json
import os
import signal

import pytest

from experiments.benchmark import corpus as bench, corpus_parts
from rnnjax.workdir import WorkdirError


def test_generated_text_is_utf8_of_the_size_asked_with_another_alphabet(tmp_path):
    path = tmp_path / "t.txt"
    corpus_parts.generate(path, 50_000, seed=1)
    text = path.read_bytes().decode("utf-8")
    assert 49_000 < path.stat().st_size <= 50_000
    assert {"\n", ",", "."} <= set(text) and set(text) & set("éüßøñж") and any(c.isupper() for c in text)


def test_prepare_reports_the_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNJAX_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "t.txt"
    corpus_parts.generate(path, 20_000)
    r = corpus_parts.prepare(str(path), "char")
    assert r["tokens"] == len(path.read_text(encoding="utf-8")) and not r["cache_hit"]
    assert r["peak_rss_mb"] >= r["rss_before_mb"] > 0 and r["seconds"] > 0
    assert corpus_parts.prepare(str(path), "char")["cache_hit"]


@pytest.mark.parametrize("argv,message", [
    (["--sizes", "abc"], "--sizes must be distinct whole numbers of MB from 1 to 4,096 separated by commas, "
                         "got 'abc'."),
    (["--sizes", "-1"], "--sizes must be distinct whole numbers of MB"),
    (["--sizes", "0"], "--sizes must be distinct whole numbers of MB"),
    (["--sizes", "1,1"], "--sizes must be distinct whole numbers of MB"),       # measured one text twice
    (["--tokens", "bogus"], "--tokens must be char, word or char,word, got 'bogus'."),
    (["--tokens", "char,char"], "--tokens must be char, word or char,word, got 'char,char'."),
    (["--steps", "5"], "--steps must be a positive multiple of 10, the steps of a compiled call, got 5"),
    (["--steps", "19"], "--steps must be a positive multiple of 10"),     # ran 10, divided by 19
    (["--steps", "-10"], "--steps must be a positive multiple of 10"),
    (["--rounds", "0"], "--rounds must be at least 1, got 0"),
    (["--rounds", "1001"], "--rounds must be at most 1,000, got 1,001"),      # were hours of measuring
    (["--steps", "1000000"], "--steps must be at most 100,000, got 1,000,000"),
    (["--out", "a-file"], "--out must be a folder, got 'a-file'"),
    (["--out", "a-file/sub"], "--out must be a folder, got 'a-file/sub'"),
    (["--data", "missing.txt"], "missing.txt"),
    (["--data", os.fsdecode(b"in\xff.txt")], "--data in\\xff.txt has bytes that are not UTF-8 in its path"),
])
def test_bad_arguments_are_one_line_before_any_text_is_made(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("")
    defaults = {"--sizes": "1", "--out": "out"}
    status = bench.main([*(x for k, v in defaults.items() if k not in argv for x in (k, v)), *argv])
    err = capsys.readouterr().err       # status 2 is the parser's, as in every command
    assert status == 1 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert err.endswith(".\n") and "--help" not in err
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
    assert bench.main(["--sizes", "1", "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (f"error: --out {tmp_path / 'out'} holds {name}, which this benchmark "
                                       "did not write (or which is damaged); move it aside (an earlier "
                                       "run's texts are reused), or give a new or empty folder.\n")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [name]
    if (tmp_path / "out" / name).is_file():
        assert (tmp_path / "out" / name).read_text() == '{"mine": 1}'


def test_a_text_is_made_once_and_made_again_if_changed(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_parts, "MB", 10_000)                 # 1 "MB": 10 kB
    path = tmp_path / "text-1mb.txt"
    assert corpus_parts.made(path, 1) and not corpus_parts.made(path, 1)
    first = path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text-1mb.sha1", "text-1mb.txt"]
    assert all(bench._ours(p) for p in tmp_path.iterdir())  # an earlier run's folder: used again
    (tmp_path / "corpus.json").write_text(json.dumps({"machine": "m", "prepare": {}, "train": {}}))
    assert bench._ours(tmp_path / "corpus.json")
    path.write_bytes(first[:-10])                            # cut short or edited: made again, as it was
    assert corpus_parts.made(path, 1) and path.read_bytes() == first
    (tmp_path / "text-1mb.sha1").unlink()                    # an earlier version's: beside its corpus.json
    assert bench._ours(path) and corpus_parts.made(path, 1) and not corpus_parts.made(path, 1)
    (tmp_path / "text-1mb.sha1").unlink()
    (tmp_path / "corpus.json").unlink()
    assert not bench._ours(path)                             # a text of one's own, it may be


def test_a_damaged_sha1_is_a_text_to_make_again(tmp_path, monkeypatch):
    """Bytes that are not text in text-1mb.sha1 were a UnicodeDecodeError."""
    monkeypatch.setattr(corpus_parts, "MB", 10_000)
    path = tmp_path / "text-1mb.txt"
    corpus_parts.made(path, 1)
    (tmp_path / "text-1mb.sha1").write_bytes(b"\xff\xfe")
    assert corpus_parts.made(path, 1) and not corpus_parts.made(path, 1)


@pytest.mark.parametrize("kind,message", [
    ("loop", "--out loop is in a loop of links; give a new folder"),      # were FileExistsError at mkdir
    ("dangling", "--out dangling is a link to nothing; give a new folder"),
    ("long", "--out has a name of 300 bytes in its path"),                # was OSError from Path.exists
    ("unwritable", "cannot be written in /proc"),            # as a read-only file system: was an OSError
    ("empty data", "--data is empty; give a path"),          # was silently no Time Machine
])
def test_an_out_or_data_it_cannot_use_is_one_line_before_any_work(tmp_path, monkeypatch, capsys,
                                                                  kind, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "_fresh", _no_child)
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dangling").symlink_to("nowhere/out")
    out = {"long": "a" * 300, "unwritable": "/proc/no-such/out", "empty data": "out"}.get(kind, kind)
    argv = ["--sizes", "1", "--out", out, *(["--data", ""] if kind == "empty data" else [])]
    with pytest.raises(SystemExit) as e:
        raise SystemExit(bench.main(argv))
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "loop"]       # nothing made


def _no_child(*args, env=None):
    raise AssertionError(f"a child process was started: {args}")


def _children(out, fail: str = ""):
    """A stand-in for the fresh processes (``_fresh``): canned results at once, a failure for ``fail``; it
    checks corpus.json as training starts."""
    def fresh(*args, env=None):
        if fail and fail in args:
            raise ValueError(f"{fail} failed in a fresh process (exit status 1): RuntimeError: boom")
        if "--devices" in args:
            return {"backend": "cpu", "count": 1, "kind": "cpu"}
        if "--prepare" in args:
            return {"seconds": 0.1, "rss_before_mb": 1, "peak_rss_mb": 2, "tokens": 5, "vocab": 3}
        written = json.loads((out / "corpus.json").read_text())        # after each part: prepared, not done
        assert written["prepare"] and written["complete"] is False, written
        return {"runs": {"raw": {"tokens": 5, "vocab": 3, "ms_per_step": 1.0, "ms_min": 1.0, "ms_max": 1.0,
                                 "steps_per_s": 1e3, "load_s": 0.1}}, "peak_rss_mb": 2}
    return fresh


def test_it_says_what_it_does_and_corpus_json_is_written_after_each_part(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(corpus_parts, "MB", 10_000)
    monkeypatch.delenv("RNNJAX_TIMEMACHINE", raising=False)
    out = tmp_path / "out"
    monkeypatch.setattr(bench, "_fresh", _children(out))
    assert bench.main(["--sizes", "1", "--tokens", "char", "--out", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert (f"training on the largest (not on the Time Machine: no --data) on 1 cpu device; writing to {out} "
            "(new)") in first
    assert json.loads((out / "corpus.json").read_text())["complete"] is True
    assert bench.main(["--sizes", "1", "--tokens", "char", "--out", str(out)]) == 0      # its .lock is ours
    assert "(an earlier run's, whose texts it reuses)" in capsys.readouterr().out


def test_a_failing_child_is_one_line_and_keeps_what_was_measured(tmp_path, monkeypatch, capsys):
    """A failing training process was a RuntimeError with its traceback inside, and lost the preparations."""
    monkeypatch.setattr(corpus_parts, "MB", 10_000)
    out = tmp_path / "out"
    monkeypatch.setattr(bench, "_fresh", _children(out, fail="--train"))
    assert bench.main(["--sizes", "1", "--tokens", "char", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: --train failed in a fresh process (exit status 1): RuntimeError: boom; "
                   f"{out / 'corpus.json'} keeps what was measured before it; the texts made whole stay.\n")
    written = json.loads((out / "corpus.json").read_text())
    assert written["prepare"] and written["complete"] is False


def test_a_full_disk_or_a_closed_output_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(corpus_parts, "MB", 10_000)
    out = tmp_path / "out"
    monkeypatch.setattr(bench, "_fresh", _children(out))
    argv = ["--sizes", "1", "--tokens", "char", "--out", str(out)]

    def full(path, text=None, save=None):
        raise WorkdirError(f"{path} cannot be written (No space left on device).")
    monkeypatch.setattr(bench, "write_atomically", full)
    assert bench.main(argv) == 1
    assert capsys.readouterr().err.endswith("(No space left on device); no figure was written; the texts "
                                            "made whole stay.\n")
    monkeypatch.undo()
    monkeypatch.setattr(corpus_parts, "MB", 10_000)
    monkeypatch.setattr(bench, "_fresh", _children(out))

    class Full:
        def write(self, text):
            raise OSError(28, "No space left on device")

        def flush(self):
            pass
    monkeypatch.setattr("sys.stdout", Full())
    assert bench.main(argv) == 1
    assert capsys.readouterr().err == ("Stopped: No space left on device (writing the output); no figure "
                                       "was written; the texts made whole stay.\n")

    class Closed(Full):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr("sys.stdout", Closed())
    monkeypatch.setattr(bench.stopping, "drop_output", lambda: None)
    assert bench.main(argv) == 128 + signal.SIGPIPE
    assert capsys.readouterr().err == ("Stopped: the output was closed (the reader of a pipe exited); no "
                                       "figure was written; the texts made whole stay.\n")


def test_one_run_writes_an_out_folder_at_a_time(tmp_path, monkeypatch, capsys):
    """Two runs on one --out competed for the cores, and one's corpus.json won silently."""
    from rnnjax.lock import lock
    out = tmp_path / "out"
    monkeypatch.setattr(bench, "_fresh", _children(out))
    with lock(out, flag="--out"):
        (out / "text-1mb.txt.tmp.tmp").write_text("the text the other run is making")
        assert bench.main(["--sizes", "1", "--tokens", "char", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {out} is in use by process {os.getpid()}")
    assert err.endswith("use another --out.\n") and err.count("\n") == 1      # not what the other run keeps
    assert not (out / "corpus.json").exists()
    assert (out / "text-1mb.txt.tmp.tmp").exists()          # the other run's, not removed as its own


def test_a_text_cut_short_by_a_stop_is_removed(tmp_path, monkeypatch, capsys):
    """A stopped generation left text-200mb.txt.tmp.tmp, which later runs kept without a word."""
    monkeypatch.setattr(corpus_parts, "MB", 10_000)
    out = tmp_path / "out"
    out.mkdir()
    corpus_parts.made(out / "text-1mb.txt", 1)
    (out / "text-200mb.txt.tmp.tmp").write_text("half a text")
    monkeypatch.setattr(bench, "_fresh", _children(out))
    status = bench.main(["--sizes", "1", "--tokens", "char", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [".lock", "corpus.json", "text-1mb.sha1", "text-1mb.txt"]
    assert status == 0
    (out / "text-1mb.txt.tmp").write_text("half a text")
    stop = bench._Stop(out)
    monkeypatch.setattr(bench.stopping, "exit_now", lambda message, status: print(message, status))
    stop(2, None)                       # before its lock is held: the file may be another run's
    assert (out / "text-1mb.txt.tmp").exists() and capsys.readouterr().out.endswith("made whole stay. 130\n")
    stop.held = True
    stop(2, None)
    assert capsys.readouterr().out.endswith("; the texts made whole stay; text-1mb.txt.tmp, cut short, "
                                            "removed. 130\n")
    assert not (out / "text-1mb.txt.tmp").exists()


def test_an_unusable_jax_platforms_is_one_line_before_any_work(tmp_path):
    """It generated and prepared the texts, then failed in the training process with a traceback."""
    import subprocess
    import sys
    env = {**os.environ, "JAX_PLATFORMS": "no-such-backend", "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-m", "experiments.benchmark.corpus", "--sizes", "1", "--out",
                        str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("error: $JAX_PLATFORMS='no-such-backend' asks for a "
                                                     "backend") and r.stderr.count("\n") == 1, r.stderr
    assert r.stdout == "" and not (tmp_path / "out").exists()


def test_a_failing_child_process_is_one_sentence(tmp_path, monkeypatch):
    """Its own error line as it is; else its last line (a traceback's), not the whole traceback."""
    with pytest.raises(ValueError, match=r"^No such file: missing.txt \(--text"):
        bench._fresh("preparing missing.txt", "--prepare", "missing.txt", "char", env=dict(os.environ))
    (tmp_path / "experiments").mkdir()              # a child that fails as it starts, with a traceback
    (tmp_path / "experiments" / "__init__.py").write_text("raise RuntimeError('boom')")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as e:
        bench._fresh("preparing t", "--prepare", "t", "char", env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert str(e.value) == "preparing t failed in a fresh process (exit status 1): RuntimeError: boom"


@pytest.mark.slow
def test_a_stop_while_a_text_is_made_removes_it(tmp_path):
    """A SIGINT while generating left text-200mb.txt.tmp.tmp behind, and said the texts stay."""
    import signal
    import subprocess
    import sys
    import time
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    argv = [sys.executable, "-m", "experiments.benchmark.corpus", "--sizes", "200", "--out",
            str(tmp_path / "out")]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "writing to" in proc.stdout.readline()             # the start line: it makes the text now
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err == ("Stopped by signal 2 (SIGINT); no figure was written; the texts made whole stay; "
                   "text-200mb.txt.tmp.tmp, cut short, removed.\n")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".lock"]
