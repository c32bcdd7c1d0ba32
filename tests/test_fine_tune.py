"""``--init-from W`` (``experiments.fine_tune``): a new run from another's parameters, from the command line
as ``fit(..., params=restore(W))`` trains it from Python."""

import json
import re
import shutil

import jax
import numpy as np
import pytest

import rnnjax
from experiments import timemachine
from rnnjax import checkpoint, corpus, source as source_lib

FLAGS = ["--devices", "1", "--no-compilation-cache", "--no-progress"]


def main(capsys, *argv) -> tuple[int, str, str]:
    code = timemachine.main([str(a) for a in argv] + FLAGS)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def source(make_text, tmp_path, capsys):
    """A run of the tiny preset on a text of its own (one epoch), and another text to fine-tune on."""
    (tmp_path / "a.txt").write_text(make_text(3000))
    (tmp_path / "b.txt").write_text(make_text(2000, 1))
    code, _, err = main(capsys, "--text", tmp_path / "a.txt", "--preset", "tiny", "--epochs", "1",
                        "--workdir", tmp_path / "src")
    assert code == 0, err
    return tmp_path / "src"


def equal_trees(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("argv, message", [
    (["--init-from", "src", "--workdir", "w", "--predict", "it"],
     "--init-from starts a training run from another run's parameters; --predict"),
    (["--init-from", "src"], "trains a new run from that run's parameters: name the new run's folder with "
                             "--workdir NEW."),
    (["--init-from", "w", "--workdir", "./w"], "--init-from and --workdir name the same folder, w:"),
    (["--init-from", "src", "--workdir", "w", "--preset", "tiny"], "changed by the flags given; leave "
                                                                   "--preset out."),
    (["--init-from", "", "--workdir", "w"], "--init-from is empty"),
    (["--run", "1"], "--run chooses the run of a workdir that --predict generates from (or --init-from"),
    (["--best"], "--best chooses the checkpoint that --predict generates from (or --init-from"),
], ids=["with --predict", "no --workdir", "the same folder", "--preset", "empty", "--run alone",
        "--best alone"])
def test_flags_that_cannot_go_together_are_refused_before_any_work(tmp_path, monkeypatch, capsys, argv,
                                                                   message):
    monkeypatch.chdir(tmp_path)
    code, out, err = main(capsys, *argv)
    assert code == 1 and out == "" and err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_run_fine_tuned_from_the_command_line_is_fit_s_from_python(source, tmp_path, capsys):
    """The same run as ``fit(config, corpus.load(config, text, vocab=run.vocab), params=run)``, its origin
    recorded; the same command resumes it, and a workdir of another run is refused."""
    tuned = tmp_path / "tuned"
    argv = ["--init-from", source, "--text", tmp_path / "b.txt", "--workdir", tuned, "--lr", "0.5"]
    code, out, err = main(capsys, *argv, "--epochs", "2")
    assert code == 0, err
    start = checkpoint.restore(source)
    lines = out.splitlines()
    assert lines[0].startswith("new run of 2 epochs")
    assert lines[1].startswith(f"data: {len(start.vocab)} characters in the vocabulary; ")
    assert lines[2].startswith(f"starting from {source}'s checkpoint step {start.step} (after epoch 1, "
                               "val ppl ")
    recorded = json.loads((tuned / "config.json").read_text())
    assert recorded["init_from"] == {"workdir": str(source), "step": start.step,
                                     "meta_checksum": start.meta["meta_checksum"]}
    assert checkpoint.restore(tuned).init_from == recorded["init_from"] and start.init_from is None
    config = start.config.replace(epochs=2, lr=0.5)
    assert checkpoint.restore(tuned).config == config
    data = corpus.load(config, text=tmp_path / "b.txt", vocab=start.vocab)
    alone = rnnjax.fit(config, data, tmp_path / "alone", params=start, devices=1, log=None)
    equal_trees(checkpoint.restore(tuned).params, alone.state.params)

    code, out, err = main(capsys, *argv, "--epochs", "3")       # the same command, more epochs: it resumes
    assert code == 0, err
    assert out.splitlines()[1] == (f"--init-from is not used: {tuned} holds a checkpoint of a run started "
                                   f"from {source}'s step {start.step}, which resumes")
    assert "resuming from step" in out and checkpoint.restore(tuned).config.epochs == 3
    assert json.loads((tuned / "config.json").read_text())["init_from"] == recorded["init_from"]
    (tuned / "config.json").unlink()            # the checkpoints record it too
    assert checkpoint.restore(tuned).init_from == recorded["init_from"]
    code, out, err = main(capsys, *argv, "--epochs", "4")
    assert code == 0 and f"--init-from is not used: {tuned} holds a checkpoint of a run started " in out, err
    assert json.loads((tuned / "config.json").read_text())["init_from"] == recorded["init_from"]
    code, _, err = main(capsys, "--init-from", tuned, "--text", tmp_path / "b.txt", "--workdir", source)
    assert code == 1 and err == (f"error: {source} holds a run not started from another's parameters, not "
                                 f"from {tuned}: use a new --workdir, or leave --init-from out to resume "
                                 "it.\n")
    code, _, err = main(capsys, *argv, "--run", "1")
    assert code == 1 and err == (f"error: {tuned} holds a run started from {source}'s step {start.step}, not "
                                 f"from {source}'s run 1: use a new --workdir, or leave --init-from out to "
                                 "resume it.\n")


@pytest.mark.slow
def test_a_restart_takes_the_very_checkpoint_it_started_from_or_says_why_not(source, tmp_path, capsys):
    """After a kill before the first checkpoint: the same command starts from the step recorded, not W's
    latest since; a source trained anew in the same folder (its step another run's) or to other shapes is
    not taken for it."""
    tuned, argv = tmp_path / "tuned", ["--text", tmp_path / "b.txt", "--workdir", tmp_path / "tuned"]
    first = checkpoint.restore(source)
    assert main(capsys, "--init-from", source, *argv)[0] == 0
    shutil.rmtree(tuned / checkpoint.SUBDIR)
    assert main(capsys, "--workdir", source, "--epochs", "2")[0] == 0          # the source trains on
    code, out, err = main(capsys, "--init-from", source, *argv)
    assert code == 0 and f"starting from {source}'s checkpoint step {first.step} " in out, err
    assert "this run starts from there again (a new --workdir: from what --init-from asks now)\n" in out
    shutil.rmtree(tuned / checkpoint.SUBDIR)
    shutil.rmtree(source)           # trained anew there: its step is another run's
    assert main(capsys, "--text", tmp_path / "a.txt", "--preset", "tiny", "--epochs", "1", "--seed", "5",
                "--workdir", source)[0] == 0
    code, _, err = main(capsys, "--workdir", tuned)
    assert code == 1 and "(that checkpoint is another run's now: " in err and err.count("\n") == 1, err
    code, out, err = main(capsys, "--init-from", source, *argv)
    assert code == 0 and (f", whose step is another run's now (trained anew there): this run starts from "
                          f"{source}'s latest\n") in out, err
    shutil.rmtree(tuned / checkpoint.SUBDIR)
    shutil.rmtree(source)           # trained anew to other shapes
    assert main(capsys, "--text", tmp_path / "a.txt", "--preset", "tiny", "--epochs", "1", "--num-hiddens",
                "8", "--workdir", source)[0] == 0
    code, out, err = main(capsys, "--workdir", tuned)
    assert code == 0 and "untrained: '" in out, err
    assert "; --num-hiddens 16 does not fit its parameters (--num-hiddens 8): this run starts from its own " \
        "initialization\n" in out


@pytest.mark.slow
def test_a_damaged_source_checkpoint_is_passed_over_as_it_says(source, tmp_path, capsys):
    """The latest damaged: the newest good one before it, said; the one a restart recorded damaged since:
    the same command starts from what --init-from asks (a restart without it says how to go on)."""
    from test_faults import flip_a_bit
    tuned, argv = tmp_path / "tuned", ["--text", tmp_path / "b.txt", "--workdir", tmp_path / "tuned"]
    first = checkpoint.restore(source)
    assert main(capsys, "--workdir", source, "--epochs", "2", "--checkpoint-every", "1")[0] == 0
    latest = checkpoint.restore(source).step
    assert main(capsys, "--init-from", source, *argv)[0] == 0
    shutil.rmtree(tuned / checkpoint.SUBDIR)
    flip_a_bit(source / checkpoint.SUBDIR / str(latest))
    code, _, err = main(capsys, "--workdir", tuned)
    assert code == 1 and err.endswith("--init-from W starts it from the newest good checkpoint of the run in "
                                      "W.\n"), err
    code, out, err = main(capsys, "--init-from", source, *argv)
    assert code == 0, err
    assert f"step {latest} (its config.json's init_from), which cannot be read back (the checkpoint at " \
        f"step {latest} in " in out and f"this run starts from {source}'s latest\n{source}'s checkpoint " \
        f"step {latest} is damaged (" in out and f"this run starts from step {first.step}\n" in out
    assert checkpoint.restore(tuned).init_from["step"] == first.step


@pytest.mark.slow
def test_one_run_trained_as_runs_needs_no_run_and_a_moved_source_is_said(make_text, tmp_path, capsys):
    (tmp_path / "a.txt").write_text(make_text(3000))
    config = rnnjax.config.PRESETS["tiny"].replace(epochs=1, **corpus.TEXT_DEFAULTS)
    rnnjax.fit_runs([config], corpus.load(config, text=tmp_path / "a.txt"), tmp_path / "src", devices=1,
                    log=None)
    argv = ["--text", tmp_path / "a.txt", "--workdir", tmp_path / "tuned"]
    assert main(capsys, "--init-from", tmp_path / "src", *argv)[0] == 0
    assert checkpoint.restore(tmp_path / "tuned").init_from["run"] == 0
    shutil.rmtree(tmp_path / "tuned" / checkpoint.SUBDIR)
    (tmp_path / "src").rename(tmp_path / "moved")
    code, out, err = main(capsys, "--init-from", tmp_path / "moved", *argv)
    assert code == 0 and (f"(its config.json's init_from), not {tmp_path / 'moved'}'s run 0: this run starts "
                          f"from {tmp_path / 'moved'}'s latest\n") in out, err


def test_the_source_named_another_way_is_the_same_source(source, tmp_path, monkeypatch, capsys):
    """The same command from another folder, the source through a link or ``..``: the run it started resumes
    (config.json records the source's real path)."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(source)
    monkeypatch.chdir(tmp_path / "sub")
    argv = ["--text", "../b.txt", "--workdir", "../tuned"]
    assert main(capsys, "--init-from", "../src", *argv, "--epochs", "1")[0] == 0
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["init_from"]["workdir"] == \
        str(source.resolve())
    for named in ("../link", "../sub/../src", str(source)):
        code, out, err = main(capsys, "--init-from", named, *argv, "--epochs", "2")
        assert code == 0 and "--init-from is not used: " in out, err
    code, out, err = main(capsys, "--init-from", "../src", "--run", "0", *argv, "--epochs", "2")
    assert code == 0 and "--init-from is not used: " in out, err        # run 0 of a single run: the run


@pytest.mark.slow
def test_a_run_that_left_no_checkpoint_starts_from_its_origin_again(source, tmp_path, capsys):
    """Stopped before its first checkpoint, ``--workdir W`` alone trains it again from where its
    config.json says it started; the source gone, one sentence that says how to go on."""
    tuned = tmp_path / "tuned"
    assert main(capsys, "--init-from", source, "--text", tmp_path / "b.txt", "--workdir", tuned)[0] == 0
    first = checkpoint.restore(tuned)
    shutil.rmtree(tuned / checkpoint.SUBDIR)
    code, out, err = main(capsys, "--workdir", tuned, "--text", tmp_path / "b.txt")
    assert code == 0, err
    step = checkpoint.restore(source).step
    assert f"{tuned}'s run, which left no checkpoint, started from {source}'s step {step} (its " \
        "config.json's init_from): this run starts from there again\n" in out
    assert f"starting from {source}'s checkpoint step {step} " in out
    equal_trees(checkpoint.restore(tuned).params, first.params)
    shutil.rmtree(tuned / checkpoint.SUBDIR)      # other settings: anew, from there still
    code, out, err = main(capsys, "--workdir", tuned, "--text", tmp_path / "b.txt", "--lr", "0.5")
    assert code == 0 and f"starting from {source}'s checkpoint step {step} " in out, err
    assert json.loads((tuned / "config.json").read_text())["init_from"] == checkpoint.restore(source).address
    shutil.rmtree(tuned / checkpoint.SUBDIR)      # unless the flags change what the parameters fix
    code, out, err = main(capsys, "--workdir", tuned, "--text", tmp_path / "b.txt", "--num-hiddens", "8")
    assert code == 0 and "untrained: '" in out, err
    assert (f"{tuned}'s run, which left no checkpoint, started from {source}'s step {step} (its "
            "config.json's init_from); --num-hiddens 8 does not fit its parameters (--num-hiddens 16): this "
            "run starts from its own initialization\n") in out
    assert "init_from" not in json.loads((tuned / "config.json").read_text())
    shutil.rmtree(tuned / checkpoint.SUBDIR)
    (tuned / "config.json").write_text(json.dumps({**json.loads((tuned / "config.1.json").read_text())}))
    code, out, err = main(capsys, "--workdir", tuned, "--text", tmp_path / "b.txt", "--preset", "tiny")
    assert code == 0 and "this run starts from there again\n" in out, err         # a preset that fits
    shutil.rmtree(tuned / checkpoint.SUBDIR)
    (tuned / "config.json").write_text(json.dumps({**json.loads((tuned / "config.1.json").read_text())}))
    code, out, err = main(capsys, "--workdir", tuned, "--text", tmp_path / "b.txt", "--preset", "d2l",
                          "--num-train", "100")
    assert code == 0 and "; --num-hiddens 32 does not fit its parameters (--num-hiddens 16): this run " \
        "starts from its own initialization\n" in out, err
    shutil.rmtree(tuned / checkpoint.SUBDIR)
    earlier = json.loads((tuned / "config.1.json").read_text())
    (tuned / "config.json").write_text(json.dumps({**earlier, "init_from": {**earlier["init_from"],
                                                                            "step": "13"}}))
    code, out, err = main(capsys, "--workdir", tuned, "--text", tmp_path / "b.txt")
    assert code == 0 and f"{tuned / 'config.json'}'s init_from cannot be read (its step is '13'): this run " \
        "starts from its own initialization\n" in out, err
    shutil.rmtree(tuned / checkpoint.SUBDIR)
    (tuned / "config.json").write_text(json.dumps({**json.loads((tuned / "config.1.json").read_text())}))
    shutil.rmtree(source)
    code, out, err = main(capsys, "--workdir", tuned, "--text", tmp_path / "b.txt")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: {tuned}'s run started from {source}'s step {step} (its config.json's "
                          f"init_from), which cannot be read back ({source} is no longer a workdir): "), err
    assert err.endswith("--init-from W starts it from the newest good checkpoint of the run in W.\n"), err


@pytest.mark.parametrize("extra, message", [
    (["--init-from", "nowhere"], "--init-from nowhere does not exist; give the workdir of a trained run."),
    (["--init-from", "empty"], "--init-from empty holds no checkpoint of a run; give the workdir of a "
                               "trained run."),
    (["--init-from", "src", "--num-hiddens", "64"],
     "--init-from src: --num-hiddens 64 does not fit its parameters (--num-hiddens 16); leave it out."),
    (["--init-from", "src", "--token", "word"],
     "--init-from src: --token word does not fit its vocabulary (--token char); leave it out."),
    (["--init-from", "src", "--run", "1"], "--init-from src holds a single run; leave out --run 1."),
], ids=["missing", "no checkpoint", "another size", "other tokens", "--run of one"])
def test_a_source_the_new_run_cannot_start_from_is_refused_in_one_sentence(source, tmp_path, monkeypatch,
                                                                           capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    code, out, err = main(capsys, *extra, "--text", "b.txt", "--workdir", "tuned")
    assert code == 1 and err == f"error: {message}\n" and not (tmp_path / "tuned").exists()


@pytest.mark.slow
def test_runs_fine_tuned_together_each_start_from_the_run_chosen(make_text, tmp_path, capsys):
    """A lr sweep from run K of several: every run starts from its parameters (``fit_runs(params=...)``)."""
    (tmp_path / "a.txt").write_text(make_text(3000))
    args = ["--text", tmp_path / "a.txt", "--epochs", "1"]
    assert main(capsys, *args, "--preset", "tiny", "--seeds", "0,1", "--workdir", tmp_path / "src")[0] == 0
    code, _, err = main(capsys, *args, "--init-from", tmp_path / "src", "--workdir", tmp_path / "tuned")
    assert code == 1 and err == (f"error: --init-from {tmp_path / 'src'} holds 2 runs trained together; "
                                 "choose one with --run K, K from 0 to 1.\n")
    code, out, err = main(capsys, *args, "--init-from", tmp_path / "src", "--run", "1", "--lr", "0.5,2",
                          "--workdir", tmp_path / "tuned")
    assert code == 0, err
    start = checkpoint.restore(tmp_path / "src", run=1)
    assert f"starting from {tmp_path / 'src'}'s checkpoint step {start.step} (after epoch 1, val ppl " in out
    assert "; from the parameters of the run it fine-tunes" in out
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["init_from"] == start.address
    data = corpus.load(start.config, text=tmp_path / "a.txt", vocab=start.vocab)
    for k, lr in enumerate((0.5, 2.0)):
        tuned = checkpoint.restore(tmp_path / "tuned", run=k)
        assert tuned.config == start.config.replace(lr=lr)
        alone = rnnjax.fit(tuned.config, data, tmp_path / f"alone{k}", params=start, devices=1, log=None)
        for a, b in zip(jax.tree.leaves(tuned.params), jax.tree.leaves(alone.state.params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_start_says_the_parameters_perplexity_on_the_new_text(source, tmp_path, capsys):
    """Before training: on the source's own text and split, its own validation perplexity; on another,
    ``Restored.perplexity``'s on it."""
    start = checkpoint.restore(source)
    for text, workdir in (("a.txt", "same"), ("b.txt", "other")):
        code, out, err = main(capsys, "--init-from", source, "--text", tmp_path / text, "--workdir",
                              tmp_path / workdir, "--epochs", "1")
        assert code == 0, err
        there, here = re.search(r"val ppl ([\d.]+) there; val ppl ([\d.]+) on this run's text, before "
                                r"training\): '", out).groups()
        assert float(there) == round(start.val_ppl, 2)
        data = corpus.load(start.config, text=tmp_path / text, vocab=start.vocab)
        assert float(here) == round(start.perplexity(data), 2)
    assert float(there) != float(here)


def test_with_no_text_named_it_trains_on_the_source_s_own_text_and_says_so(source, tmp_path, capsys,
                                                                           real_text_path):
    """It had trained on the Time Machine unsaid (researcher, 2026-12-07): the text is one of the run's
    settings that the flags change."""
    code, out, err = main(capsys, "--init-from", source, "--workdir", tmp_path / "same", "--lr", "0.5")
    assert code == 0, err
    assert f"text: {tmp_path / 'a.txt'}, the text {source}'s run trained on (--text PATH for another)" in out
    tuned = checkpoint.restore(tmp_path / "same")
    assert tuned.config.lr == 0.5 and tuned.vocab.source == checkpoint.restore(source).vocab.source
    assert json.loads((tmp_path / "same" / "config.json").read_text())["text"] == str(tmp_path / "a.txt")
    code, out, err = main(capsys, "--init-from", source, "--workdir", tmp_path / "tm", "--data",
                          real_text_path)
    assert code == 0 and "the Time Machine" not in out and "a.txt" not in out, err      # named: that one
    assert checkpoint.restore(tmp_path / "tm").vocab.source == source_lib.SHA1        # the text it read
    # Not the text it trained on: changed since, gone, or never a file the workdir records.
    text, config_json = tmp_path / "a.txt", source / "config.json"
    text.write_text(text.read_text() + "an edit\n")
    recorded = json.loads(config_json.read_text())
    whys = f"'{text}' holds another now (SHA-1 ", f"'{text}' is not there", "its workdir records no file"
    for why in whys:
        code, out, err = main(capsys, "--init-from", source, "--workdir", tmp_path / "gone")
        assert code == 1 and err.startswith(f"error: --init-from {source}: its run trained on a text of your "
                                            f"own (SHA-1 "), err
        assert why in err and err.endswith(": name the text to train on, --text PATH (or the Time Machine, "
                                           "--data PATH).\n") and not (tmp_path / "gone").exists()
        if text.exists():
            text.unlink()
        else:
            config_json.write_text(json.dumps({k: v for k, v in recorded.items() if k != "text"}))


def test_a_run_of_the_time_machine_read_as_a_text_fine_tunes_from_that_file(real_text_path, tmp_path,
                                                                            capsys, monkeypatch):
    """It had needed $RNNJAX_TIMEMACHINE or d2l's download, though its config.json names the file (hostile
    pass): a Time Machine run of --text counts as the Time Machine's (by SHA-1)."""
    code, _, err = main(capsys, "--text", real_text_path, "--preset", "tiny", "--epochs", "1",
                        "--steps-per-epoch", "3", "--workdir", tmp_path / "src")
    assert code == 0, err
    monkeypatch.delenv("RNNJAX_TIMEMACHINE")
    monkeypatch.setenv("RNNJAX_CACHE", str(tmp_path / "no-cache"))       # nothing downloaded: none to read
    code, out, err = main(capsys, "--init-from", tmp_path / "src", "--workdir", tmp_path / "tuned", "--lr",
                          "0.5")
    assert code == 0, err
    assert f"text: the Time Machine, from {real_text_path}, as {tmp_path / 'src'}'s run read it" in out


@pytest.mark.slow
def test_the_split_follows_the_text_and_the_cleaning_the_vocabulary(real_text_path, make_text, tmp_path,
                                                                    capsys):
    """From the Time Machine to a text of one's own: ``--text``'s split (a tail to validate, every window),
    the text cleaned as the Time Machine's was (d2l's lower-case letters: no capital is ``<unk>``); back
    to the Time Machine: d2l's windows, cleaned as that text was."""
    (tmp_path / "b.txt").write_text(make_text(2000, 1).upper())
    assert main(capsys, "--data", real_text_path, "--preset", "tiny", "--epochs", "1", "--workdir",
                tmp_path / "src")[0] == 0
    code, out, err = main(capsys, "--init-from", tmp_path / "src", "--text", tmp_path / "b.txt",
                          "--workdir", tmp_path / "tuned", "--epochs", "1")
    assert code == 0 and err == "", err
    config = checkpoint.restore(tmp_path / "tuned").config
    assert (config.preprocess, config.val_fraction, config.num_train) == ("d2l", 0.1, 0)
    assert checkpoint.restore(tmp_path / "tuned").vocab.idx_to_token == \
        checkpoint.restore(tmp_path / "src").vocab.idx_to_token
    code, out, err = main(capsys, "--init-from", tmp_path / "tuned", "--data", real_text_path, "--workdir",
                          tmp_path / "back", "--epochs", "1", "--preprocess", "raw")
    assert code == 0 and "read as <unk>" in err, err        # the capitals it never saw: said
    config = checkpoint.restore(tmp_path / "back").config
    default = rnnjax.Config()
    assert (config.preprocess, config.val_fraction, config.num_train, config.num_val) == (
        "raw", 0.0, default.num_train, default.num_val)


def test_multi_host_processes_compare_the_checkpoint_they_start_from(source, tmp_path, monkeypatch):
    from experiments import cli, settings
    monkeypatch.chdir(tmp_path)

    def shared(*argv):
        args = cli.parse_args([*argv, "--text", "b.txt", "--workdir", "tuned"])
        return cli.shared_settings(args, *settings.settings(args))
    assert shared("--init-from", "src") == shared("--init-from", str(source))
    assert shared("--init-from", "src")["init_from"] == {"workdir": str(source), "run": None, "best": False}
    assert shared("--init-from", "src", "--best")["init_from"]["best"] is True
