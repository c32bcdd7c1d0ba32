"""``experiments.settings``: the runs the flags ask for, read from a workdir that holds one (``--workdir W
--epochs 200`` resumes a run made with any preset and flags), and where they write."""

import json
import os
import re
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import cli, timemachine
from experiments.settings import default_workdir, settings
from rnnjax import checkpoint, corpus, meta as meta_lib, metrics, runs
from rnnjax.lock import lock
from rnnjax.config import Config
from rnnjax.data import Vocab
from rnnjax.source import PREPROCESSED_SHA1, SHA1

from conftest import TINY, assert_trees_equal


def test_the_default_workdir_is_named_by_what_the_flags_change():
    tiny = Config(batch_size=16, num_steps=8, num_hiddens=16, epochs=3, num_train=200, num_val=50)
    assert default_workdir("d2l", [Config()]) == Path("runs/d2l")
    assert default_workdir("tiny", [tiny]) == Path("runs/tiny")
    named = default_workdir("d2l", [Config(lr=2.0)])
    assert named.name.startswith("d2l-") and len(named.name) == 12
    assert default_workdir("d2l", [Config(lr=2.0, epochs=200, kernel="plain")]) == named
    assert default_workdir("d2l", [Config(lr=3.0)]) != named
    assert default_workdir("d2l", [Config(seed=0), Config(seed=1)]) not in (named, "runs/d2l")
    for text, starts in (("notes/my text.txt", "my_text-"), (".hidden.txt", "hidden-"), ("-x.txt", "x-"),
                         ("...", "text-")):        # a folder ls shows, never read as a flag
        assert default_workdir("tiny", [tiny], text).name.startswith(starts), text


def test_a_run_of_a_text_named_with_a_leading_dot_made_before_that_rule_is_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    new = default_workdir("tiny", [TINY], ".notes.txt")
    earlier = new.with_name("." + new.name)
    earlier.mkdir(parents=True)
    assert default_workdir("tiny", [TINY], ".notes.txt") == earlier


def saved(workdir, configs, text_sha1=None, together=None, checkpointed=True):
    """A workdir as a run of ``configs`` (trained ``together``: by default if several) leaves it: its
    ``config.json`` and, if ``checkpointed``, a checkpoint of epoch 1 (of a stand-in state)."""
    vocab = Vocab(list("abc "), source=text_sha1)
    runs = configs if (len(configs) > 1 if together is None else together) else None
    checkpoint.write_config(workdir, configs[0], vocab, runs=runs)
    if checkpointed:
        n = len(configs)
        position = {"epoch": 1, "batch": 0, "partial": [{}] * n, "stopped": [], "high": [0] * n}
        extra = {"runs": [c.to_json() for c in runs]} if runs else {}
        manager = checkpoint.manager(workdir / checkpoint.SUBDIR)
        checkpoint.save(manager, 13, {"a": np.zeros(3, np.float32)},
                        meta_lib.make(configs[0], vocab, position, 13, **extra))
        checkpoint.check_saved(manager)
        manager.close()
    return str(workdir)


def test_adam_at_a_preset_s_sgd_rate_is_warned_of(tmp_path):
    """--preset gru --optimizer adam trained at lr 4 and diverged three epochs later (researcher day 3)."""
    args = ["--preset", "gru", "--optimizer", "adam", "--workdir", str(tmp_path / "w")]
    said = r"^--optimizer adam trains at --lr 4, the rate the settings give SGD; Adam's are nearer 0.001 to"
    with pytest.warns(UserWarning, match=said):
        assert settings(cli.parse_args(args))[0][0].lr == 4.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        settings(cli.parse_args([*args, "--lr", "4"]))                     # typed: as asked
        settings(cli.parse_args(["--preset", "gru", "--workdir", str(tmp_path / "sgd")]))


def test_a_workdir_s_own_settings_are_read_and_the_resumable_flags_change_them(tmp_path):
    run = TINY.replace(lr=2.0, num_hiddens=24, cell="gru")
    w = saved(tmp_path / "w", [run])
    args = cli.parse_args(["--workdir", w, "--epochs", "200"])
    assert settings(args) == ([run.replace(epochs=200)], Path(w), False)
    same = ["--workdir", w, "--lr", "2", "--cell", "gru", "--kernel", "plain"]     # agreeing flags are fine
    assert settings(cli.parse_args(same))[0] == [run.replace(kernel="plain")]


def test_flags_that_ask_for_other_settings_than_the_workdir_s_are_one_sentence(tmp_path):
    w = saved(tmp_path / "w", [TINY.replace(lr=2.0)])
    with pytest.raises(ValueError, match=r"holds a run of other settings than the flags ask for: "
                                         r"--num-hiddens 8 \(it has 16\); --lr 3 \(it has 2\)\. Leave those.*"
                                         r"or use a new --workdir\.$"):
        settings(cli.parse_args(["--workdir", w, "--lr", "3", "--num-hiddens", "8", "--epochs", "9"]))
    with pytest.raises(ValueError, match=r"holds a run of .*: --lr 2\.0000001 \(it has 2\)"):   # all digits
        settings(cli.parse_args(["--workdir", w, "--lr", "2.0000001"]))
    # Another rate is a new run from its parameters; another size is not (it would not fit them).
    tune = rf"or use a new --workdir \(with --init-from {re.escape(w)} to start from its parameters\)\.$"
    with pytest.raises(ValueError, match=tune):
        settings(cli.parse_args(["--workdir", w, "--lr", "3", "--optimizer", "adam"]))
    for bad, says in ((["--lr", "nan"], "--lr must be a positive finite number"),      # no run could have it
                      (["--cell", "GRU"], "--cell GRU is not a known cell")):
        with pytest.raises(ValueError, match=f"^{says}"):
            settings(cli.parse_args(["--workdir", w, *bad]))


def test_runs_trained_together_resume_as_a_whole(tmp_path):
    configs = [TINY.replace(seed=s) for s in (0, 1)]
    w = saved(tmp_path / "w", configs)
    assert settings(cli.parse_args(["--workdir", w, "--epochs", "5"]))[0] == [
        c.replace(epochs=5) for c in configs]
    assert settings(cli.parse_args(["--workdir", w, "--seeds", "0,1"]))[0] == configs
    for other, has in (("0", "0,1"), ("1,0", "0,1, in that order")):     # fewer; in another order (the
        with pytest.raises(ValueError, match=rf"--seeds? {other} \(it has {has}\)"):    # stacked state's)
            settings(cli.parse_args(["--workdir", w, "--seeds", other]))
    # A new run starts from one of them: --init-from would ask which (hostile pass).
    one = rf"\(with --init-from {re.escape(w)} --run K to start from one run's parameters\)\.$"
    with pytest.raises(ValueError, match=one):
        settings(cli.parse_args(["--workdir", w, "--lr", "2"]))


def test_a_preset_that_asks_for_another_count_of_runs_than_the_workdir_holds_names_both(tmp_path):
    two = saved(tmp_path / "two", [TINY.replace(seed=s) for s in (0, 1)])
    one = saved(tmp_path / "one", [TINY])
    one_together = saved(tmp_path / "one_together", [TINY], together=True)      # rnnjax.fit_runs([config])
    fix = r"\. Leave --preset{} out to train it on with its own settings, or use a new --workdir\.$"
    lists = r" \(and the lists of --seeds, --lr, --clip\)"
    together = r"runs trained together \(seed 0, 1{}; lr 1; clip 1\)"
    for w, flags, holds, asked, leave in (
            (two, [], "2 " + together.format(""), "a single run as --preset tiny asks", ""),
            (two, ["--seeds", "0,1,2"], "2 runs",
             f"3 {together.format(', 2')} as --preset tiny and the flags given ask", lists),
            (one, ["--seeds", "0,1"], "a single run", f"2 {together.format('')} .* ask", lists),
            (one_together, ["--seeds", "0,1"], r"1 run trained together \(seed 0; lr 1; clip 1\)", "2 runs",
             lists)):
        with pytest.raises(ValueError, match=rf"^{re.escape(w)} holds {holds}.*, not {asked}.* for"
                                             rf"{fix.format(leave)}"):
            settings(cli.parse_args(["--workdir", w, "--preset", "tiny", *flags]))


def test_one_run_trained_together_resumes_as_runs_trained_together(tmp_path):
    """``rnnjax.fit_runs([config])``'s workdir: what its config.json says, not the count of its runs."""
    w = saved(tmp_path / "w", [TINY], together=True)
    expected = ([TINY.replace(epochs=5)], Path(w), True)
    assert settings(cli.parse_args(["--workdir", w, "--epochs", "5"])) == expected
    assert settings(cli.parse_args(["--workdir", w, "--preset", "tiny"]))[2] is True
    (Path(w) / "config.json").unlink()          # the checkpoint's meta says so too
    assert settings(cli.parse_args(["--workdir", w]))[2] is True
    assert settings(cli.parse_args(["--workdir", saved(tmp_path / "one", [TINY])]))[2] is False
    two = saved(tmp_path / "two", [TINY, TINY.replace(seed=1)])
    assert settings(cli.parse_args(["--workdir", two]))[2] is True


def test_a_workdir_with_no_checkpoint_of_its_run_starts_anew_with_the_flags(tmp_path):
    """Killed before its first save: nothing to resume, so flags (or a --preset) asking for other settings
    train anew there, saying so; flags that agree go on with its settings."""
    w = saved(tmp_path / "w", [TINY.replace(lr=2.0)], checkpointed=False)
    (Path(w) / checkpoint.SUBDIR).mkdir()            # made as the run started, empty
    args = cli.parse_args(["--workdir", w, "--num-hiddens", "64"])          # its settings, changed by them
    assert settings(args) == ([TINY.replace(lr=2.0, num_hiddens=64)], Path(w), False)
    assert args.anew == (f"{w} holds no checkpoint of its earlier run: starting anew with its settings "
                         "changed by the flags") and args.settings_from is None
    args = cli.parse_args(["--workdir", w, "--preset", "tiny", "--seeds", "0,1"])
    assert settings(args) == ([TINY.replace(seed=0), TINY.replace(seed=1)], Path(w), True) and args.anew
    args = cli.parse_args(["--workdir", w, "--preset", "d2l"])
    assert settings(args)[0] == [Config()] and args.anew.endswith("with --preset d2l's settings changed by "
                                                                  "the flags")
    args = cli.parse_args(["--workdir", w, "--lr", "2", "--epochs", "7"])       # its own settings
    assert settings(args)[0] == [TINY.replace(lr=2.0, epochs=7)] and args.anew is None
    assert args.settings_from == "its config.json"
    with pytest.raises(ValueError, match="^--lr must be a positive finite number"):      # no run could
        settings(cli.parse_args(["--workdir", w, "--lr", "nan"]))
    mine = saved(tmp_path / "mine", [TINY], text_sha1="ab" * 20, checkpointed=False)
    with pytest.raises(ValueError, match="trained on a text of your own .*give that file again"):
        settings(cli.parse_args(["--workdir", mine, "--num-hiddens", "8"]))      # not the Time Machine
    args = cli.parse_args(["--workdir", mine, "--text", "other.txt", "--num-hiddens", "8"])
    assert settings(args)[0][0].num_hiddens == 8 and args.anew
    both = [TINY.replace(seed=0, lr=2.0), TINY.replace(seed=1, lr=3.0)]       # runs trained together: each
    w2 = saved(tmp_path / "w2", both, checkpointed=False)
    args = cli.parse_args(["--workdir", w2, "--num-hiddens", "64"])
    assert settings(args) == ([c.replace(num_hiddens=64) for c in both], Path(w2), True)
    assert args.anew.endswith("starting anew with its runs' settings changed by the flags")
    args = cli.parse_args(["--workdir", w2, "--seeds", "4,5"])                # the runs the flags list
    assert settings(args)[0] == [both[0].replace(seed=4), both[0].replace(seed=5)]


def test_a_workdir_with_no_checkpoint_of_a_cell_not_registered_here_starts_anew_with_a_cell_asked_for(
        tmp_path):
    """Nothing of that run can be resumed: --cell or --preset starts anew there; without them, one sentence
    saying both ways. With a checkpoint, the cell is still asked for."""
    w = saved(tmp_path / "w", [TINY], checkpointed=False)
    written = json.loads((Path(w) / "config.json").read_text())
    written["config"]["cell"] = "gone"                # a cell of one's own, not registered in this process
    (Path(w) / "config.json").write_text(json.dumps(written))
    with pytest.raises(ValueError, match=rf"^{w} holds no checkpoint of its earlier run, whose cell 'gone' "
                                         r"is not registered here: give --cell \(or --preset\) to start"):
        settings(cli.parse_args(["--workdir", w, "--epochs", "3"]))
    args = cli.parse_args(["--workdir", w, "--cell", "gru"])
    assert settings(args)[0] == [Config(cell="gru")] and args.anew == (
        f"{w} holds no checkpoint of its earlier run: starting anew with --preset d2l's settings changed by "
        "the flags (its cell 'gone' is not registered here)")
    args = cli.parse_args(["--workdir", w, "--preset", "tiny"])
    assert settings(args)[0] == [TINY] and args.anew.endswith("tiny's settings changed by the flags (its "
                                                              "cell 'gone' is not registered here)")
    other = saved(tmp_path / "other", [TINY.replace(cell="gru")])
    written = json.loads((Path(other) / "config.json").read_text())
    written["config"]["cell"] = "gone"
    (Path(other) / "config.json").write_text(json.dumps(written))
    with pytest.raises(ValueError, match="disagrees with the checkpoint step 13"):     # which would resume
        settings(cli.parse_args(["--workdir", other, "--cell", "gru"]))


def test_a_config_json_that_is_not_whole_and_valid_gives_no_settings(tmp_path):
    w = tmp_path / "w"
    saved(w, [TINY.replace(lr=2.0)], checkpointed=False)
    good = json.loads((w / "config.json").read_text())
    for bad in ({"config": {"lr": 7}, "vocab": good["vocab"]}, {**good, "runs": "all"},
                {**good, "vocab": {**good["vocab"], "text_sha1": 5}}):
        (w / "config.json").write_text(json.dumps(bad))
        assert settings(cli.parse_args(["--workdir", str(w), "--lr", "3"]))[0] == [Config(lr=3.0)]


def test_the_text_a_workdir_was_trained_on_is_asked_for(tmp_path):
    mine = saved(tmp_path / "mine", [TINY], text_sha1="ab" * 20)
    with pytest.raises(ValueError, match="trained on a text of your own .*give that file again, --text PATH"):
        settings(cli.parse_args(["--workdir", mine, "--epochs", "5"]))
    written = json.loads((Path(mine) / "config.json").read_text())     # as a run of --text writes it
    (Path(mine) / "config.json").write_text(json.dumps({**written, "text": "/books/mine.txt"}))
    with pytest.raises(ValueError, match=r"\(SHA-1 abababababab\.\.\., read from '/books/mine.txt'\): give"):
        settings(cli.parse_args(["--workdir", mine, "--epochs", "5"]))       # not there: asked for
    (tmp_path / "mine.txt").write_text("a text")
    (Path(mine) / "config.json").write_text(json.dumps({**written, "text": str(tmp_path / "mine.txt")}))
    args = cli.parse_args(["--workdir", mine, "--epochs", "5"])
    assert settings(args)[0][0].epochs == 5 and args.text == str(tmp_path / "mine.txt")    # there: read
    tm = saved(tmp_path / "tm", [TINY])
    with pytest.raises(ValueError, match="trained on the Time Machine, not on --text: leave --text out"):
        settings(cli.parse_args(["--workdir", tm, "--text", "book.txt"]))
    # The Time Machine tokenized otherwise (--token word, --preprocess raw) records its SHA-1: it resumes
    # without --text, as it was trained.
    for sha1 in (SHA1, PREPROCESSED_SHA1):
        words = saved(tmp_path / f"words-{sha1[:4]}", [TINY.replace(token="word")], text_sha1=sha1)
        assert settings(cli.parse_args(["--workdir", words, "--epochs", "5"]))[0] == [
            TINY.replace(token="word", epochs=5)]
        # With no checkpoint, other flags start anew there, as for d2l's tokens.
        fresh = saved(tmp_path / f"fresh-{sha1[:4]}", [TINY.replace(token="word")], text_sha1=sha1,
                      checkpointed=False)
        args = cli.parse_args(["--workdir", fresh, "--lr", "2"])
        assert settings(args)[0] == [TINY.replace(token="word", lr=2.0)] and args.anew


def test_a_preset_given_or_a_workdir_without_a_run_takes_the_preset_and_the_flags(tmp_path):
    w = saved(tmp_path / "w", [TINY.replace(lr=2.0)])
    # a preset given: the flags' settings, checked against the run's own, the preset named as what set them
    tiny = ["--workdir", w, "--preset", "tiny", "--lr", "2"]
    assert settings(cli.parse_args([*tiny, "--epochs", "9"]))[0] == [TINY.replace(lr=2.0, epochs=9)]
    with pytest.raises(ValueError, match=r"holds a run of other settings than --preset d2l asks for: "
                                         r"--batch-size 1024 \(it has 16\); .*Leave --preset out to train"):
        settings(cli.parse_args(["--workdir", w, "--preset", "d2l"]))
    with pytest.raises(ValueError, match=r"than --preset tiny and the flags given ask for: --lr 3 "
                                         r"\(it has 2\)\."):
        settings(cli.parse_args([*tiny[:-1], "3"]))
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text("not json")
    for empty in (tmp_path / "new", tmp_path / "odd"):
        assert settings(cli.parse_args(["--workdir", str(empty), "--lr", "3"]))[0] == [Config(lr=3.0)]
    text = cli.parse_args(["--text", "book.txt"])                 # --text's defaults, then the flags
    assert settings(text)[0][0].preprocess == "raw" and settings(text)[1].name.startswith("book-")


def test_without_a_readable_config_json_the_newest_checkpoint_s_settings_are_read(tmp_path, monkeypatch):
    w = tmp_path / "w"
    run = TINY.replace(lr=2.0)
    manager = checkpoint.manager(w / checkpoint.SUBDIR)
    position = {"epoch": 0, "batch": 1, "partial": [{"loss_sum": 1.0, "count": 2.0}], "stopped": [],
                "high": [0]}
    meta = meta_lib.make(run, Vocab(list("ab ")), position, 13)
    checkpoint.save(manager, 1, {"a": np.zeros(3, np.float32)}, meta)
    checkpoint.check_saved(manager)
    manager.close()
    (w / "config.json").write_text("{torn")
    args = cli.parse_args(["--workdir", str(w)])
    assert settings(args)[0] == [run]
    assert args.settings_from == "its checkpoint step 1, config.json being damaged"   # said so
    (w / "config.json").unlink()
    args = cli.parse_args(["--workdir", str(w)])
    assert settings(args)[0] == [run] and args.settings_from.endswith("config.json being missing")
    (w / "config.json").write_text("{}")
    access, opened = os.access, Path.read_text

    def denied(path, *args, **kwargs):      # its permissions, as a user who is not root meets them
        if Path(path).name == "config.json":
            raise PermissionError(13, "Permission denied", str(path))
        return opened(path, *args, **kwargs)

    def readable(path, mode):
        return Path(path).name != "config.json" and access(path, mode)
    monkeypatch.setattr(Path, "read_text", denied)
    monkeypatch.setattr(os, "access", readable)
    args = cli.parse_args(["--workdir", str(w)])
    assert settings(args)[0] == [run] and args.settings_from.endswith("config.json being unreadable")
    (w / checkpoint.SUBDIR / "007").mkdir()          # a folder orbax would misread: the run says so later
    assert settings(cli.parse_args(["--workdir", str(w), "--lr", "3"]))[0] == [Config(lr=3.0)]


def test_a_config_json_edited_to_disagree_with_its_checkpoint_is_named(tmp_path):
    w = tmp_path / "w"
    run, vocab = TINY.replace(lr=2.0), Vocab(list("ab "))
    manager = checkpoint.manager(w / checkpoint.SUBDIR)
    position = {"epoch": 1, "batch": 0, "partial": [{}], "stopped": [], "high": [0]}
    meta = meta_lib.make(run, vocab, position, 13)
    checkpoint.save(manager, 13, {"a": np.zeros(3, np.float32)}, meta)
    checkpoint.check_saved(manager)
    manager.close()
    checkpoint.write_config(w, run.replace(epochs=9, kernel="plain"), vocab)      # resumable: the same run
    assert settings(cli.parse_args(["--workdir", str(w)]))[0] == [run.replace(epochs=9, kernel="plain")]
    checkpoint.write_config(w, run.replace(num_hiddens=24, cell="gru"), Vocab(list("abc ")))
    with pytest.raises(ValueError, match=rf"^{w / 'config.json'} disagrees with the checkpoint step 13 that "
                                         r"would resume \(num_hiddens: config.json 24, checkpoint 16; cell: "
                                         r"config.json 'gru', checkpoint 'rnn'; the vocabulary\): put"):
        settings(cli.parse_args(["--workdir", str(w)]))
    config = json.loads((w / checkpoint.CONFIG).read_text())
    config["config"]["cell"] = "foo"                 # it said the run was trained with 'foo': register it
    (w / checkpoint.CONFIG).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"disagrees with the checkpoint step 13 that would resume \(cell: "
                                         r"config.json 'foo', which is not registered here, checkpoint "
                                         r"'rnn'\)"):
        settings(cli.parse_args(["--workdir", str(w)]))


@pytest.mark.slow
def test_the_cli_resumes_a_workdir_from_its_settings(make_text, tmp_path, capsys):
    text = tmp_path / "mine.txt"
    text.write_text(make_text(3000))
    w = str(tmp_path / "w")
    first = ["--text", str(text), "--preset", "tiny", "--lr", "2", "--num-hiddens", "8", "--workdir", w,
             "--epochs", "1", "--devices", "1", "--no-compilation-cache", "--no-progress"]
    assert timemachine.main(first) == 0
    capsys.readouterr()
    assert timemachine.main(["--text", str(text), "--workdir", w, "--epochs", "2", "--devices", "1"]) == 0
    out = capsys.readouterr().out
    said, started = out.splitlines()[:2]
    assert said == f"settings: those of the run in {w} (its config.json), the flags given checked against " \
        "them"
    assert started.startswith("resuming from step ") and "(epoch 2 of 2, batch 0)" in started
    expected = TINY.replace(lr=2.0, num_hiddens=8, epochs=2, preprocess="raw", val_fraction=0.1, num_train=0)
    assert checkpoint.restore(w).config == expected
    assert timemachine.main(["--workdir", w, "--epochs", "3", "--devices", "1"]) == 0   # the file it names
    out = capsys.readouterr().out           # said before the text is read
    assert out.startswith(f"text: {text.absolute()}, as its config.json records\n")
    assert "\nresuming from step " in out
    text.write_text(text.read_text() + "more")
    assert timemachine.main(["--workdir", w, "--epochs", "4", "--devices", "1"]) == 1   # changed: refused
    assert "holds a run trained on the text of SHA-1 " in capsys.readouterr().err


@pytest.mark.slow
def test_the_cli_resumes_and_predicts_one_run_trained_together(make_text, tmp_path, capsys):
    """A workdir of rnnjax.fit_runs([config]): resumed bit for bit, and --predict takes its only run."""
    text = tmp_path / "mine.txt"
    text.write_text(make_text(3000))
    config = TINY.replace(epochs=1, preprocess="raw", val_fraction=0.1, num_train=0)      # --text's defaults
    data = corpus.load(config, text=text)
    w = str(tmp_path / "w")
    runs.fit_runs([config], data, w, devices=1, log=None)
    args = ["--text", str(text), "--workdir", w, "--devices", "1", "--no-compilation-cache", "--no-progress"]
    assert timemachine.main([*args, "--epochs", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("resuming 1 runs from step ")
    unbroken = runs.fit_runs([config.replace(epochs=2)], data, tmp_path / "unbroken", devices=1, log=None)
    first = jax.tree.map(lambda x: x[0], unbroken.state.params)
    assert_trees_equal(checkpoint.restore(w, run=0).params, first)
    records = metrics.MetricsLog(Path(w) / metrics.FILENAME).read()
    assert [(r["epoch"], r["val_ppl"]) for r in records] == [(r["epoch"], r["val_ppl"])
                                                             for r in unbroken.history]
    assert timemachine.main(["--workdir", w, "--predict", "the", "--num-preds", "5"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("the") and err.startswith(f"from {w}: checkpoint step ") and "(run 0's)" in err


@pytest.mark.slow
def test_the_cli_starts_anew_in_a_workdir_killed_before_its_first_checkpoint(make_text, tmp_path, capsys):
    """Its records and plot are moved aside, not lost; the new run is the flags' (and --preset's)."""
    import shutil
    text = tmp_path / "mine.txt"
    text.write_text(make_text(3000))
    w = tmp_path / "w"
    args = ["--text", str(text), "--workdir", str(w), "--preset", "tiny", "--epochs", "1", "--devices", "1",
            "--no-compilation-cache", "--no-progress"]
    assert timemachine.main(args) == 0
    shutil.rmtree(w / checkpoint.SUBDIR)          # as if killed before it: config.json, .lock, records, plot
    earlier = (w / metrics.FILENAME).read_text()
    capsys.readouterr()
    with lock(w):                                # in use: refused, and it said nothing it then did not do
        assert timemachine.main([*args, "--num-hiddens", "8"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: The workdir {w} is in use by ")
    assert timemachine.main([*args, "--num-hiddens", "8"]) == 0
    said, started = capsys.readouterr().out.splitlines()[:2]
    assert said == (f"{w} holds no checkpoint of its earlier run: starting anew with --preset tiny's "
                    "settings changed by the flags")
    assert started.startswith("new run of 1 epoch") and started.endswith(
        "moving metrics.jsonl, steps.jsonl, config.json and ppl.png aside, as metrics.1.jsonl, "
        "steps.1.jsonl, config.1.json and ppl.1.png")
    assert (w / "metrics.1.jsonl").read_text() == earlier
    assert json.loads((w / "config.1.json").read_text())["config"]["num_hiddens"] == 16      # its settings
    assert checkpoint.restore(w).config.num_hiddens == 8
    shutil.rmtree(w / checkpoint.SUBDIR)          # again, its cell one of one's own not registered here
    written = json.loads((w / "config.json").read_text())
    (w / "config.json").write_text(json.dumps({**written, "config": {**written["config"], "cell": "gone"}}))
    assert timemachine.main([*args, "--cell", "gru"]) == 0
    assert "(its cell 'gone' is not registered here)" in capsys.readouterr().out
    assert json.loads((w / "config.2.json").read_text())["config"]["cell"] == "gone"
    assert checkpoint.restore(w).config.cell == "gru"


@pytest.mark.cpu_devices(1)
def test_a_saved_setting_this_machine_cannot_resume_is_said_to_be_the_workdir_s(tmp_path, capsys):
    w = saved(tmp_path / "w", [TINY.replace(cell="lstm", kernel="cudnn")])      # trained on a GPU
    assert timemachine.main(["--workdir", w, "--epochs", "5", "--no-compilation-cache"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: resuming the run in {w} (its saved settings, the flags given applied): "
                          "--kernel cudnn runs cuDNN's LSTM, which needs an NVIDIA GPU")
    assert err.count("\n") == 1
