"""The main job, ``python -m experiments.timemachine``, run in-process."""

import json
import os
import re
import shutil
import signal
import sys
import warnings

import pytest

from experiments import timemachine, training
from rnnjax import checkpoint, data, metrics, source, stops


@pytest.mark.slow
def test_d2l_recipe_end_to_end(real_text_path, tmp_path, main_job):
    """d2l's recipe (the CLI defaults): 100 epochs on the real text."""
    workdir = tmp_path / "run"
    proc = main_job("--data", real_text_path, "--workdir", str(workdir), "--no-progress", as_a_user=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    records = metrics.MetricsLog(workdir / "metrics.jsonl").read()
    assert [r["epoch"] for r in records] == list(range(1, 101))
    # 7.19-7.43 measured, by seed, CPU, device count and JAX release (README); 4 devices untried
    assert records[-1]["val_ppl"] <= 7.5 and records[-1]["train_ppl"] <= 6.1
    assert (workdir / "ppl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    untrained = re.search(r"untrained: '(.*)'", out).group(1)
    trained = re.search(r"^trained: '(.*)'", out, re.M).group(1)
    assert untrained.startswith("it has") and len(untrained) == 26
    assert trained.startswith("it has") and len(trained) == 26
    # Greedy characters make words, mostly (docs/results.md);
    # the last one may be cut off.
    corpus_words = set(data.preprocess(open(real_text_path).read()).split())
    words = trained[len("it has"):].split()[:-1]
    assert len(words) >= 2 and sum(w in corpus_words for w in words) >= 0.5 * len(words), trained


@pytest.mark.slow
def test_a_closed_pipe_stops_the_run_in_one_line(real_text_path, tmp_path, main_job):
    """``... | head -1``: the reader exits after the first line; the run stops as a piped tool does."""
    proc = main_job("--data", real_text_path, "--workdir", str(tmp_path / "run"), "--preset", "tiny",
                    "--epochs", "2", "--no-compilation-cache", cpu_devices=1)
    assert proc.stdout.readline().startswith("new run of 2 epochs")
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert err.startswith("Stopped: the output was closed") and err.count("\n") == 1, err


def test_offline_without_data_says_what_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(source.ENV_PATH, raising=False)
    monkeypatch.setenv(source.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setattr(source, "URL", "http://127.0.0.1:9/timemachine.txt")
    assert timemachine.main(["--workdir", str(tmp_path / "run"), "--epochs", "1",
                             "--no-compilation-cache"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data PATH or $RNNJAX_TIMEMACHINE" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.cpu_devices(4)
def test_batch_size_not_divisible_by_devices(real_text_path, tmp_path, capsys):
    assert timemachine.main(["--data", real_text_path, "--workdir", str(tmp_path / "run"), "--devices", "4",
                             "--batch-size", "1022", "--epochs", "1", "--no-compilation-cache"]) == 1
    err = capsys.readouterr().err
    assert "1022" in err and "4" in err and "divisible" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,message", [
    (["--bogus"], "unrecognized arguments: --bogus"), (["--epochs", "x"], "invalid int value: 'x'"),
    (["--num-hidens", "3"], "unrecognized arguments: --num-hidens 3 (did you mean --num-hiddens? see"),
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--seeds", "0,0"], "'0,0' lists 0 twice: list each value once"),       # two runs the same run
    (["--predict", "a", "--lr", "1,0.5,1.0"], "'1,0.5,1.0' lists 1 twice"),
    (["--lr", os.fsdecode(b"1\xff")], "'1\\xff' is not a comma-separated list"),      # as typed, not \udcff
    ])
def test_argparse_errors_are_one_line_and_point_to_help(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        timemachine.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert err.endswith("see python -m experiments.timemachine --help)\n") and "usage" not in err


def test_an_argument_that_is_not_utf8_is_said_as_typed(tmp_path, capsys):
    """Python keeps bytes that are not UTF-8 as surrogates, which printed as \\udcff."""
    assert timemachine.main(["--data", str(tmp_path / os.fsdecode(b"x\xff")), "--no-compilation-cache"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: No such file: ") and "x\\xff (given as --data" in err and "udc" not in err
    typed = "C:\\udcafe\\notes.txt"          # text typed so: as typed
    assert timemachine.main(["--text", typed, "--no-compilation-cache"]) == 1
    assert f"No such file: {typed} (--text" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        timemachine.main(["--preset", "\\udcff"])
    assert "invalid choice: '\\\\udcff'" in capsys.readouterr().err      # argparse's repr of it
    with pytest.raises(SystemExit):
        timemachine.main(["C:\\udcafe"])
    assert "unrecognized arguments: C:\\udcafe (see" in capsys.readouterr().err
    assert timemachine.main(["--token", os.fsdecode(b"w\xff")]) == 1                  # a ConfigError's repr
    assert capsys.readouterr().err == "error: --token must be char or word, got 'w\\xff'.\n"


@pytest.mark.slow
@pytest.mark.cpu_devices(1)
def test_cli_says_new_then_resumed_then_nothing_to_train(real_text_path, tmp_path, capsys, monkeypatch):
    """With no --workdir: the same command resumes (the default workdir is named by the settings)."""
    monkeypatch.chdir(tmp_path)
    args = ["--data", real_text_path, "--preset", "tiny", "--devices", "1", "--no-compilation-cache"]
    assert timemachine.main(args + ["--epochs", "2"]) == 0
    out = capsys.readouterr().out
    # no advice: one device was chosen
    assert out.startswith("new run of 2 epochs on 1 CPU device(s), fused loss (rnnjax.fused: the "
                          "recurrence and the output layer), float32 matmuls; writing to runs/tiny\n")
    assert "untrained: 'it has" in out
    assert "epoch 2/2  step 26/26  train ppl" in out            # plain lines when not on a terminal
    assert timemachine.main(args + ["--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("resuming from step 26 (epoch 3 of 3, batch 0)") and "untrained" not in out
    assert timemachine.main(args + ["--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "nothing to train" in out and "epoch 3: train perplexity" in out and "bits per character" in out

    # --predict with the training command's flags and no --workdir: the run that command trained.
    assert timemachine.main(args + ["--predict", "it has"]) == 0
    assert capsys.readouterr().err.startswith("from runs/tiny: checkpoint step 39 (after epoch 3")
    assert timemachine.main(args + ["--lr", "2", "--predict", "it has"]) == 1
    untrained = capsys.readouterr().err
    assert untrained.startswith("error: --predict without --workdir generates from the run these flags "
                                "train, in runs/tiny-") and untrained.endswith(
        "or give its --workdir (and --run K for run K of --seeds trained together).\n")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tiny"]       # nothing made

    predict = ["--workdir", "runs/tiny", "--predict", "it has", "--num-preds", "40", "--no-compilation-cache"]
    assert timemachine.main(predict + ["--best"]) == 0
    best = min(metrics.MetricsLog(tmp_path / "runs/tiny/metrics.jsonl").read(),
               key=lambda r: r["val_ppl"])
    assert capsys.readouterr().err == (f"from runs/tiny: checkpoint step {13 * best['epoch']} (after epoch "
                                       f"{best['epoch']}, val ppl {best['val_ppl']:.2f})\n")
    texts = []
    for extra in ([], ["--sample", "--seed", "3"], ["--temperature", "0.8", "--top-k", "5", "--seed", "3"],
                  ["--temperature", "0.8", "--top-k", "5", "--seed", "3"], ["--temperature", "1e-4"]):
        assert timemachine.main(predict + extra) == 0
        texts.append(capsys.readouterr().out.strip())
    greedy, sampled, top5, top5_again, cold = texts
    assert all(t.startswith("it has") for t in texts) and len(greedy) == 46
    # A prompt cleaned as the run's text was (d2l's lower-case letters and spaces), and said.
    assert timemachine.main([*predict[:3], "It  HAS", *predict[4:]]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == greedy and err.endswith("; the prompt cleaned as its text was (--preprocess d2l): "
                                                  "'it has'\n"), err
    assert top5 == top5_again and sampled != greedy and cold == greedy


@pytest.mark.parametrize("bad,message", [(["--epochs", "0"], "--epochs must be at least 1"),
                                         (["--join-timeout", "5"], "--join-timeout says how long"),
                                         (["--keep", "0"], "--keep must be at least 1"),
                                         (["--cell", "nope"], "--cell nope is not a known cell"),
                                         (["--optimizer", "adamw"], "--optimizer adamw is not a known "
                                                                    "optimizer; choose from adam, sgd, or"),
                                         (["--lr", "-1"], "--lr must be a positive finite number"),
                                         pytest.param(["--devices", "9"], "--devices 9: this process has 4",
                                                      marks=pytest.mark.cpu_devices(4)),
                                         (["--sample"], "add --predict PREFIX"),
                                         (["--run", "1"], "--run chooses the run of a workdir"),
                                         (["--best"], "--best chooses the checkpoint that --predict"),
                                         (["--num-processes", "2"], "missing --coordinator, --process-id"),
                                         (["--workdir", ""], "--workdir is empty; give a path"),
                                         (["--data", ""], "--data is empty; give a path"),
                                         (["--predict", "a", "--temperature", "0"], "--temperature must"),
                                         (["--predict", "a", "--top-k", "0"], "--top-k must be at least 1"),
                                         (["--predict", "a", "--sample", "--seed", str(2 ** 70)],
                                          "--seed must be in [0, 2**32)"),
                                         (["--predict", "a", "--sample", "--seeds", "0,1"],
                                          "--seed seeds the draws, so name the runs trained together by "
                                          "their --workdir (and --run K)"),
                                         (["--devices", "0"], "--devices must be at least 1, got 0"),
                                         (["--num-preds", "5"], "--num-preds says how much --predict"),
                                         (["--dropout", "0.5"], "--dropout 0.5 acts between stacked layers, "
                                          "and --num-layers 1 has none")])
def test_bad_arguments_are_one_line_and_write_nothing(real_text_path, tmp_path, capsys, bad, message):
    base = {"--data": real_text_path, "--workdir": str(tmp_path / "run")}
    base = [x for flag, value in base.items() if flag not in bad for x in (flag, value)]   # each flag once
    assert timemachine.main([*base, "--no-compilation-cache", *bad]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.cpu_devices(2)
def test_cli_trains_a_list_of_seeds_and_rates_in_one_program(real_text_path, tmp_path, capsys):
    workdir = tmp_path / "runs"
    args = ["--data", real_text_path, "--workdir", str(workdir), "--preset", "tiny", "--epochs", "1",
            "--seeds", "0,1", "--lr", "1,2", "--devices", "2", "--no-compilation-cache"]
    assert timemachine.main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("4 new runs of 1 epoch in one program (seed 0, lr 1; seed 0, lr 2; seed 1, lr 1; "
                          "seed 1, lr 2) on 2 CPU device(s)")
    assert "run 3 (seed 1, lr 2): train perplexity" in out      # a range over the seeds of each rate:
    assert "\n2 runs of lr 1, epoch 1:  train_ppl mean" in out
    assert "\n2 runs of lr 2, epoch 1:  train_ppl mean" in out
    assert out.endswith(f"; wrote {workdir}\n")
    records = metrics.MetricsLog(workdir / "metrics.jsonl").read()
    expected = [(0, 0, 1.0), (1, 0, 2.0), (2, 1, 1.0), (3, 1, 2.0)]
    assert [(r["run"], r["seed"], r["lr"]) for r in records] == expected
    assert (workdir / "ppl.png").exists()
    assert timemachine.main(["--workdir", str(workdir), "--predict", "it has", "--run", "3"]) == 0
    assert capsys.readouterr().out.startswith("it has")
    assert timemachine.main(args + ["--predict", "it has", "--run", "3"]) == 0     # the training command
    assert capsys.readouterr().out.startswith("it has")
    assert timemachine.main(["--workdir", str(workdir), "--predict", "it has", "--run", "3", "--lr",
                             "1,3"]) == 1
    assert "--lr 1,3 (it has 2)." in capsys.readouterr().err
    assert timemachine.main(["--workdir", str(workdir), "--predict", "it has"]) == 1
    assert "choose one with --run K, K from 0 to 3." in capsys.readouterr().err


@pytest.mark.slow
def test_cli_names_a_run_that_stopped_and_finishes_the_others(real_text_path, tmp_path, capsys):
    workdir = str(tmp_path / "runs")
    assert timemachine.main(["--data", real_text_path, "--workdir", workdir, "--preset", "tiny", "--epochs",
                             "2", "--lr", "1,1e6", "--devices", "1", "--no-compilation-cache"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 new runs of 2 epochs in one program (lr 1; lr 1e6)")
    assert "\nrun 1 (lr 1e6) stopped: its train perplexity is inf at epoch 1" in out     # as it stops
    assert "run 1 (lr 1e6): stopped, its train perplexity is inf at epoch 1" in out
    assert "run 0 (lr 1): train perplexity" in out and "1 run of" not in out      # its run's line says it
    assert out.endswith(f"\n2 runs, epoch 2, each one's line above; wrote {workdir}\n")
    assert timemachine.main(["--workdir", workdir, "--predict", "it has", "--run", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Run 1 of ") and "stopped early" in err and err.count("\n") == 1


def test_cli_trains_on_your_own_words_resumes_and_samples_without_the_file(tmp_path, capsys):
    text = tmp_path / "mine.txt"
    text.write_text(" ".join(["Ωmega", "42,", "Zürich.", "ÆON", "the"][i % 7 % 5] for i in range(1000)))
    args = ["--text", str(text), "--token", "word", "--workdir", str(tmp_path / "run"), "--preset", "tiny",
            "--num-steps", "4", "--devices", "1", "--no-compilation-cache"]
    assert timemachine.main(args + ["--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "untrained: 'Ωmega 42," in out and "bits per word" in out
    saved = checkpoint.restore(tmp_path / "run")
    assert (saved.config.preprocess, saved.config.val_fraction, saved.config.num_train) == ("raw", 0.1, 0)
    assert timemachine.main(args + ["--epochs", "2"]) == 0
    assert capsys.readouterr().out.startswith("resuming from step")
    text.unlink()
    assert timemachine.main(["--workdir", str(tmp_path / "run"), "--predict", "ÆON the", "--num-preds", "5",
                             "--sample", "--seed", "1"]) == 0
    words = capsys.readouterr().out.split()
    assert words[:2] == ["ÆON", "the"] and len(words) == 7


def test_a_run_fine_tuned_in_python_resumes_from_the_command_line(make_text, tmp_path, capsys):
    """Fine-tuned on a text in another run's vocabulary (the README's way), it was refused as trained on
    "another vocabulary" given that very text: the command made the text's own."""
    import rnnjax
    from conftest import other_alphabet
    (tmp_path / "base.txt").write_text(make_text(3000))
    (tmp_path / "mine.txt").write_text(make_text(2000, 1) + other_alphabet(200))      # letters base lacks
    flags = ["--preset", "tiny", "--devices", "1", "--no-compilation-cache"]
    assert timemachine.main(["--text", str(tmp_path / "base.txt"), "--workdir", str(tmp_path / "base"),
                             "--epochs", "1", *flags]) == 0
    run = checkpoint.restore(tmp_path / "base")
    config = run.config.replace(epochs=1)
    with pytest.warns(UserWarning, match=r"more of the text's tokens are read as <unk>"):
        tuned = rnnjax.corpus.load(config, text=tmp_path / "mine.txt", vocab=run.vocab)
    assert tuned.vocab.idx_to_token == run.vocab.idx_to_token != rnnjax.corpus.load(
        config, text=tmp_path / "mine.txt").vocab.idx_to_token
    rnnjax.fit(config, tuned, tmp_path / "tuned", params=run.params, devices=1, log=None)
    capsys.readouterr()
    assert timemachine.main(["--text", str(tmp_path / "mine.txt"), "--workdir", str(tmp_path / "tuned"),
                             "--epochs", "2", *flags]) == 0, capsys.readouterr().err
    assert "resuming from step" in capsys.readouterr().out
    assert checkpoint.restore(tmp_path / "tuned").vocab == tuned.vocab
    assert timemachine.main(["--text", str(tmp_path / "base.txt"), "--workdir", str(tmp_path / "tuned"),
                             "--epochs", "3", *flags]) == 1         # another text: still refused
    assert "trained on the text of SHA-1" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "tuned" / checkpoint.SUBDIR)      # no checkpoint: a new run, its own tokens
    assert timemachine.main(["--text", str(tmp_path / "mine.txt"), "--workdir", str(tmp_path / "tuned"),
                             "--epochs", "1", *flags]) == 0
    assert "new run" in capsys.readouterr().out
    assert checkpoint.restore(tmp_path / "tuned").vocab.idx_to_token != run.vocab.idx_to_token


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_output_on_a_full_disk_stops_in_one_line_and_a_closed_one_trains(make_text, tmp_path, monkeypatch,
                                                                         capsys):
    """stdout on a full disk: one sentence on stderr (it was an OSError traceback); stdout closed (``>&-``,
    ``sys.stdout`` None): the run trains, saying nothing (it was an AttributeError)."""
    (tmp_path / "t.txt").write_text(make_text(3000))
    args = ["--text", str(tmp_path / "t.txt"), "--preset", "tiny", "--epochs", "1", "--devices", "1",
            "--no-compilation-cache"]
    full = open("/dev/full", "w")
    dup = os.dup(full.fileno())              # the command points the full stdout's descriptor at /dev/null
    monkeypatch.setattr(sys, "stdout", os.fdopen(dup, "w"))
    assert timemachine.main([*args, "--workdir", str(tmp_path / "full")]) == 1
    monkeypatch.undo()
    full.close()
    err = capsys.readouterr().err
    assert err.startswith("Stopped: No space left on device (writing the output)") and err.count("\n") == 1
    monkeypatch.setattr(sys, "stdout", None)
    assert timemachine.main([*args, "--workdir", str(tmp_path / "closed")]) == 0
    monkeypatch.undo()
    assert checkpoint.latest_step(tmp_path / "closed") and not capsys.readouterr().err


@pytest.mark.parametrize("bad,message", [(["--text", "{d}/other.txt", "--data", "x"], "give one"),
                                         (["--text", ""], "--text is empty; give a path"),
                                         (["--text", "{d}/bin.txt"], "looks binary, not text"),
                                         (["--text", "{d}/bin.txt", "--bidirectional"],   # before reading
                                          "A bidirectional RNN (--bidirectional) cannot be trained"),
                                         (["--text", "{d}/other.txt", "--token", "words"],
                                          "--token must be char or word, got 'words'"),
                                         (["--text", "{d}/other.txt", "--val-fraction", "0"],
                                          "--val-fraction 0 splits --text as d2l does"),
                                         (["--text", "{d}/other.txt", "--num-steps", "10000"], "too few")])
def test_bad_text_is_one_line_and_writes_nothing(tmp_path, capsys, bad, message):
    (tmp_path / "other.txt").write_text("Ωmega 42 Zürich. " * 200)
    (tmp_path / "bin.txt").write_bytes(b"\x7fELF\x00\x01")
    args = [a.format(d=tmp_path) for a in bad]
    assert timemachine.main(["--workdir", str(tmp_path / "run"), "--no-compilation-cache", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "run").exists()


def test_after_a_run_caught_a_signal_the_cli_ignores_more_while_it_unwinds():
    """A third Ctrl-C after catch_signals has handed the signals back, while the second's Interrupted
    unwinds, is not a KeyboardInterrupt raised in some __del__ (an "Exception ignored" traceback)."""
    from rnnjax import stops
    with stops.catch_signals():
        pass
    stops.stop_handled()                               # as the CLI starts: no run of its own has ended
    assert not stops.stopping() and not stops.ended()
    with pytest.raises(KeyboardInterrupt) as e:        # no run stopping: Ctrl-C raises KeyboardInterrupt
        timemachine._interrupted(signal.SIGINT, None)
    assert type(e.value) is KeyboardInterrupt
    with pytest.raises(stops.Interrupted):
        with stops.catch_signals() as flag:
            flag(signal.SIGINT, None)
            flag(signal.SIGINT, None)
    assert stops.stopping()
    assert timemachine._interrupted(signal.SIGINT, None) is None
    assert timemachine._stopped_at_start_up(signal.SIGTERM, None) is None      # it would exit the process
    stops.stop_handled()                               # the CLI said so: signals are its own again
    with pytest.raises(KeyboardInterrupt) as e:
        timemachine._interrupted(signal.SIGINT, None)
    assert type(e.value) is KeyboardInterrupt


def test_a_ctrl_c_before_training_that_lands_in_a_gc_callback_is_delivered_again(
        monkeypatch, signal_in_a_gc_callback):
    """Raised inside a gc callback (JAX's runs at every collection), the KeyboardInterrupt would be printed
    as "Exception ignored" and lost: the signal is sent again, and stops the command a moment later."""
    import sys
    import time

    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)
    stops.stop_handled()
    previous = signal.signal(signal.SIGINT, timemachine._interrupted)
    try:
        with pytest.raises(KeyboardInterrupt) as e:
            signal_in_a_gc_callback(signal.SIGINT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert type(e.value) is KeyboardInterrupt and dropped == []


def test_a_multi_host_process_notes_a_signal_before_or_after_the_run(capfd):
    """Once joined, a first signal is deferred to the run's next step, and noted in one line; once the run
    has ended (there is none), noted so, and the process goes on to exit with its peers; a second stops
    it."""
    with stops.catch_signals():                  # a run that ended, none caught
        pass
    try:
        timemachine._deferred(signal.SIGTERM, None)
        assert capfd.readouterr().err == "Signal 15 noted: the run is trained and saved; this process " \
                                         "exits with the others of the multi-host run.\n"
    finally:
        stops.stop_handled()                     # as main returns: the kept signal goes with it
    with stops.catch_signals() as flag:          # (a later run in this interpreter does not start stopped)
        assert flag.signum is None
    stops.stop_handled()
    assert not stops.ended() and not stops.stopping()
    try:            # before its run's first step (joined, compiling): it said nothing until that step
        timemachine._deferred(signal.SIGINT, None)
        assert capfd.readouterr().err == ("Signal 2 noted: the multi-host run stops at its first step, "
                                          "saved, with its other processes (a second signal stops this one "
                                          "at once).\n")
        assert not stops.defer(signal.SIGINT)    # kept for the run, which starts with it
    finally:
        stops.stop_handled()


@pytest.mark.parametrize("code,said", [(13, "Stopped: Permission denied (/w/metrics.jsonl); the workdir"),
                                       (2, None)])
def test_an_oserror_of_the_machine_is_one_sentence_and_a_bug_s_keeps_its_traceback(
        tmp_path, monkeypatch, capsys, code, said):
    """EACCES (a locked folder) is the machine's state: one sentence; ENOENT of a path the code expected is
    a bug: raised, for its traceback."""
    def fails(*args):
        raise OSError(code, os.strerror(code), "/w/metrics.jsonl")
    monkeypatch.setattr(timemachine, "train", fails)
    argv = ["--preset", "tiny", "--workdir", str(tmp_path / "w"), "--no-compilation-cache"]
    if said is None:
        with pytest.raises(FileNotFoundError):
            timemachine.main(argv)
        return
    assert timemachine.main(argv) == 1
    assert capsys.readouterr().err.startswith(said)


def test_a_terminal_gone_mid_run_says_what_stopped_it(monkeypatch):
    """A hang-up: the progress bar's last write to the terminal fails (EIO); the run's own stop is kept."""
    from experiments import cli

    class GoneTerminal:
        gone = False

        def isatty(self):
            return True

        def write(self, text):
            if self.gone:
                raise OSError(5, "Input/output error")
            return len(text)

        def flush(self):
            self.write("")
    terminal = GoneTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    with pytest.raises(LookupError, match="the run's own stop"):
        with cli.progress_output(True, 3) as update:
            update(1, 3, None)
            terminal.gone = True
            raise LookupError("the run's own stop")


@pytest.mark.cpu_devices(1)
def test_a_workdir_a_step_of_ones_own_trained_resumes_saying_so_in_one_line(tmp_path, capsys):
    """A library warning reaches the command's user as one line, without the source line that raised it."""
    from conftest import small_text
    from rnnjax import PRESETS, corpus, create_train_state, eval_steps, loop, start, train

    def my_step(state, tokens, windows, axis_name=None):
        return train.train_windows(state, tokens, windows, axis_name)

    text, workdir, config = tmp_path / "text.txt", tmp_path / "run", PRESETS["tiny"].replace(epochs=1)
    text.write_text(small_text(5000))
    data = corpus.load(config, text=text)
    with start.planned(config, data, workdir, devices=1) as p:
        loop.run(p, data, create_train_state(config, len(data.vocab)), my_step, eval_steps)
    assert json.loads((workdir / "config.json").read_text())["text"] == str(text)    # which a resume asks for
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # PYTHONWARNINGS=error: said all the same, not raised
        assert timemachine.main(["--text", str(text), "--workdir", str(workdir), "--epochs", "2",
                                 "--devices", "1", "--no-compilation-cache"]) == 0
    err = capsys.readouterr().err
    assert err == (f"warning: the run was trained by the step {__name__}.{my_step.__qualname__} until step "
                   f"{data.num_batches(True)}; it trains on with rnnjax.train.train_windows (a step of one's "
                   "own trains on with rnnjax.loop.run).\n")


@pytest.mark.slow
def test_a_file_given_as_the_time_machine_that_is_another_points_to_text(real_text_path, tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("a text of my own " * 100)
    assert timemachine.main(["--data", str(tmp_path / "mine.txt"), "--workdir", str(tmp_path / "w"),
                             "--no-compilation-cache"]) == 1
    assert capsys.readouterr().err.endswith("it is not d2l's timemachine.txt (truncated or a different "
                                            "file); a text of your own trains with --text PATH.\n")
    assert timemachine.main(["--data", real_text_path, "--workdir", str(tmp_path / "tm"), "--preset", "tiny",
                             "--epochs", "1", "--no-compilation-cache"]) == 0
    capsys.readouterr()             # a Time Machine run resumed: --text is not for it
    assert timemachine.main(["--data", str(tmp_path / "mine.txt"), "--workdir", str(tmp_path / "tm"),
                             "--epochs", "2", "--no-compilation-cache"]) == 1
    assert capsys.readouterr().err.endswith("(truncated or a different file).\n")


@pytest.mark.slow
@pytest.mark.cpu_devices(1)
def test_a_run_its_closed_output_stops_says_the_step_it_saved(real_text_path, tmp_path, capsys, monkeypatch):
    """It said "the workdir keeps its last checkpoint (if any)" where it had just saved one (new user)."""
    import contextlib

    def closed(done, total, record):
        if record is not None:
            raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(timemachine.cli, "progress_output", lambda *a: contextlib.nullcontext(closed))
    workdir = tmp_path / "run"
    assert timemachine.main(["--data", real_text_path, "--workdir", str(workdir), "--preset", "tiny",
                             "--devices", "1", "--no-compilation-cache"]) == 128 + signal.SIGPIPE
    step = max(checkpoint.steps(workdir))
    assert capsys.readouterr().err == ("Stopped: the output was closed (the reader of a pipe exited); saved "
                                       f"step {step} in {workdir}: run the same command again to go on.\n")


@pytest.mark.slow
@pytest.mark.cpu_devices(1)
def test_a_pipe_closed_under_a_run_s_stop_line_still_saves(real_text_path, tmp_path, capsys, monkeypatch):
    """The line saying one of several runs stopped met the closed pipe first: nothing saved (hostile 3);
    with a progress line or without, the epoch is saved, then the run stops."""
    closed = []

    def fake_print(*args, **kwargs):            # stdout a pipe that closes at that line
        if closed or (args and "stopped:" in str(args[0])):
            closed.append(True)
            raise BrokenPipeError(32, "Broken pipe")
    for module in (timemachine, training, timemachine.cli):
        monkeypatch.setattr(module, "print", fake_print, raising=False)
    workdir = tmp_path / "runs"
    args = ["--data", real_text_path, "--preset", "tiny", "--lr", "1,1e30", "--epochs", "3", "--devices", "1",
            "--no-compilation-cache"]
    assert timemachine.main([*args, "--workdir", str(workdir)]) == 128 + signal.SIGPIPE
    assert closed and checkpoint.steps(workdir) == [13]         # its progress line stopped it, saved
    assert f"saved step 13 in {workdir}: run the same command again" in capsys.readouterr().err
    closed.clear()                                              # no progress line: the stop line stops it
    assert timemachine.main([*args, "--workdir", str(tmp_path / "quiet"), "--no-progress"]) == 141
    assert checkpoint.steps(tmp_path / "quiet") == [13]          # rnnjax.loop saves what log's error stopped
    assert f"saved step 13 in {tmp_path / 'quiet'}: run the same command again" in capsys.readouterr().err
