import logging
import sys
import types

from rnnjax import orbax_logs


def test_the_noise_of_an_abandoned_read_is_dropped_and_nothing_else(caplog, monkeypatch):
    """Reads orbax abandons can finish after their event loop closed: tensorstore reports that as
    unraisable ("Event loop is closed"), asyncio logs a future never retrieved. Both are dropped."""
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    for logger in ("asyncio", "absl"):
        monkeypatch.setattr(logging.getLogger(logger), "filters", [])
    orbax_logs.quiet()
    orbax_logs.quiet()                                # once: the hook is not wrapped twice

    def unraisable(e):
        return types.SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=None, err_msg=None,
                                     object=None)
    sys.unraisablehook(unraisable(RuntimeError("Event loop is closed")))
    sys.unraisablehook(unraisable(RuntimeError("something else")))
    assert [str(u.exc_value) for u in reported] == ["something else"]
    assert len(logging.getLogger("asyncio").filters) == 1
    with caplog.at_level(logging.WARNING):
        logging.getLogger("asyncio").error("Future exception was never retrieved")
        logging.getLogger("asyncio").error("Task exception was never retrieved")     # a wrapped awaitable's
        logging.getLogger("absl").warning("Attempted to create temporary directory /w/3.orbax-tmp, which "
                                          "already exists; removing it")
        logging.getLogger("asyncio").error("another asyncio error")
    assert "never retrieved" not in caplog.text and "temporary directory" not in caplog.text
    assert "another asyncio error" in caplog.text


def test_orbax_s_tracebacks_are_dropped_and_other_logs_pass():
    def record(pathname, exc_info):
        return logging.LogRecord("absl", logging.ERROR, pathname, 1, "failed", None, exc_info)
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        failure = sys.exc_info()
    drop = orbax_logs.Tracebacks()
    assert not drop.filter(record("/site-packages/orbax/checkpoint/_src/futures/future.py", failure))
    assert drop.filter(record("/site-packages/orbax/checkpoint/checkpoint_manager.py", None))  # no traceback
    assert drop.filter(record("/site-packages/jax/_src/compiler.py", failure))                   # not orbax's


def test_a_step_s_orbax_metadata_logs_are_dropped_under_the_directory_only():
    def record(message, level=logging.WARNING):
        return logging.LogRecord("absl", level, "/site-packages/orbax/checkpoint/_src/metadata/checkpoint.py",
                                 1, message, None, None)
    drop = orbax_logs.StepMetadata("/w/checkpoints")
    assert not drop.filter(record("Metadata file does not exist: /w/checkpoints/13/_CHECKPOINT_METADATA"))
    assert not drop.filter(record("Failed to json parse Metadata file: /w/checkpoints/13/_CHECKPOINT_METADATA"
                                  ", file content: , error: Expecting value", logging.ERROR))
    assert not drop.filter(record("Failed to read Metadata file: /w/checkpoints/13/_CHECKPOINT_METADATA, "
                                  "error: 'utf-8' codec can't decode byte 0xff", logging.ERROR))  # not UTF-8
    assert drop.filter(record("Metadata file does not exist: /elsewhere/13/_CHECKPOINT_METADATA"))  # others'
    assert drop.filter(record("Saving checkpoint at step 13 to /w/checkpoints"))
