import copy
import dataclasses
import json
import math

import numpy as np
import pytest

from rnnjax.config import Config, ConfigError, label
from rnnjax.spelling import flag_spelling


def test_json_round_trip_and_old_checkpoints_without_new_fields():
    config = Config(num_hiddens=8, seed=3, kernel="plain")
    assert Config.from_json(config.to_json()) == config
    old = {k: v for k, v in Config().to_json().items() if k not in ("cell", "kernel")}
    misspelt = r"^a Config has no field 'num_hidden' \(did you mean num_hiddens\?\)\.$"
    with pytest.raises(ConfigError, match=misspelt):
        Config.from_json({**old, "num_hidden": 64})        # would train with 32 units, the default
    with pytest.raises(ConfigError, match=r"^a Config has no field 'zzz'; its fields are batch_size, "):
        Config.from_json({**old, "zzz": 1})
    with pytest.raises(TypeError, match=r"^Config.from_json takes a dict, as to_json gives, not a str\.$"):
        Config.from_json("config.json")
    # saved before Config.kernel: the fused flag it replaced
    assert Config.from_json({**old, "fused": False}) == Config(kernel="plain")
    assert Config.from_json({**old, "fused": True}) == Config()
    # Made or replaced in code: Python's "unexpected keyword argument 'batchsize'", before (library user)
    for make in (lambda: Config(num_hidden=64), lambda: config.replace(num_hidden=64)):
        with pytest.raises(TypeError, match=misspelt):
            make()
    assert copy.deepcopy(config) == config == copy.copy(config)      # made again without keywords
    said = r"^a Config has no field 'fused' \(kernel replaced it: kernel='plain' trains as fused=False "
    said += r"did\)\.$"
    with pytest.raises(TypeError, match=said):        # not "did you mean seed?"
        Config(fused=False)
    import inspect                      # help() and a notebook's completion show the fields
    assert list(inspect.signature(Config).parameters) == [f.name for f in dataclasses.fields(Config)]

    @dataclasses.dataclass(frozen=True)
    class Sub(Config):                  # a subclass's, its own (Config's was inherited)
        extra: int = 3
    assert list(inspect.signature(Sub).parameters)[-1] == "extra" and Sub(extra=2).extra == 2


@pytest.mark.parametrize("change,message", [
    ({"epochs": 0}, "^epochs must be at least 1, got 0"),
    ({"num_hiddens": -3}, "^num_hiddens must be at least 1"),
    ({"batch_size": 0}, "^batch_size must be at least 1"),
    ({"num_val": 0}, "^num_val must be at least 1"),
    ({"lr": -1.0}, "^lr must be a positive finite number"),
    ({"lr": math.inf}, "^lr must be a positive finite number"),
    ({"clip": 0.0}, "^clip must be a positive finite number"),
    ({"lr": 1e39}, r"^lr must be within float32's range, 1\.18e-38 to 3\.4e\+38, as training takes it; "
                   r"got 1e39\.$"),
    ({"clip": 1e-46}, "^clip must be within float32's range"),
    ({"seed": -1}, r"^seed must be in \[0, 2\*\*32\)"),
    ({"cell": "gru9"}, "^cell='gru9' is not a known cell"),
    ({"num_steps": 2.5}, r"^num_steps must be an int, got 2\.5\.$"),
    ({"num_steps": True}, r"^num_steps must be an int, got True\.$"),
    ({"lr": True}, r"^lr must be a float, got True\.$"),
    ({"lr": "1"}, r"^lr must be a float, got '1'\.$"),
    ({"lr": 10 ** 400}, r"^lr must be a float, got a number too large for one\.$"),
    ({"cell": 1}, r"^cell must be a str, got 1\.$"),
    ({"bidirectional": 1}, "^bidirectional must be a bool"),
    ({"kernel": "cudnn9"}, "^kernel must be one of auto, plain, fused"),
    ({"compute_dtype": "float16"}, "^compute_dtype must be one of float32, bfloat16; got 'float16'"),
    ({"matmul_precision": "tf32"}, "^matmul_precision must be one of default, high, highest"),
    ({"dropout": 0.5}, "^dropout=0.5 acts between stacked layers, and num_layers=1 has none"),
])
def test_bad_values_are_one_sentence(change, message):
    with pytest.raises(ConfigError, match=message):
        Config(**change)


def test_ints_pass_as_floats():
    assert Config(lr=2).lr == 2.0 and isinstance(Config(lr=2).lr, float)


def test_numpy_numbers_pass_stored_as_python_s():
    """NumPy's integers and floats (a sweep's np.arange, np.linspace) are stored as built-in ints and floats:
    the same config, equal and hashed alike, the same config.json."""
    given = Config(batch_size=np.int64(16), seed=np.uint32(3), lr=np.float64(0.5), clip=np.float32(0.25),
                   dropout=np.float32(0.5), num_layers=np.int8(2), val_fraction=np.int64(0))
    expected = Config(batch_size=16, seed=3, lr=0.5, clip=0.25, dropout=0.5, num_layers=2, val_fraction=0.0)
    assert given == expected and hash(given) == hash(expected)
    assert json.dumps(given.to_json()) == json.dumps(expected.to_json())
    assert [type(getattr(given, f.name)) for f in dataclasses.fields(Config)] == [
        type(f.default) for f in dataclasses.fields(Config)]
    assert type(Config(cell=np.str_("gru")).cell) is str
    import jax.numpy as jnp                       # 0-d arrays, JAX's and NumPy's (a jnp sweep gives them)
    arrays = Config(batch_size=jnp.int32(16), num_steps=np.array(32), lr=jnp.float32(0.5),
                    bidirectional=np.bool_(False), dropout=jnp.array(0))
    assert arrays == Config(batch_size=16, lr=0.5, bidirectional=False, dropout=0.0)
    assert type(arrays.batch_size) is int and type(arrays.bidirectional) is bool
    for bad in (dict(batch_size=np.bool_(True)), dict(batch_size=jnp.float32(3.0)),
                dict(batch_size=np.array([16]))):
        with pytest.raises(ConfigError, match="^batch_size must be an int, got "):
            Config(**bad)


def test_differences_name_the_fields_a_resumed_run_may_not_change():
    base = Config()
    assert base.differences(base.replace(epochs=500, kernel="plain", matmul_precision="highest")) == []
    assert base.differences(base.replace(lr=2.0, cell="gru", epochs=500)) == ["cell", "lr"]   # field order


def test_values_are_shown_as_typed_and_values_that_differ_read_differently():
    with pytest.raises(ConfigError, match=r"^lr must be a positive finite number, got -1\.$"):
        Config(lr=-1)
    runs = [Config(lr=0.1234567), Config(lr=0.1234568)]
    assert [label(c, runs) for c in runs] == ["lr 0.1234567", "lr 0.1234568"]


def test_config_s_messages_name_its_fields_as_python_does_and_as_a_command_s_flags_within_flag_spelling():
    """Library calls name fields as Config takes them; the commands (which enter flag_spelling) name their
    flags, values quoted as a shell takes them; the spelling is put back after."""
    cases = [({"num_steps": 2.5}, "num_steps must be an int, got 2.5.",
              "--num-steps must be an int, got 2.5."),
             ({"cell": "a b"}, "cell='a b' is not a known cell", "--cell 'a b' is not a known cell"),
             ({"dropout": 0.5, "num_layers": 1},
              "dropout=0.5 acts between stacked layers, and num_layers=1 has none: add num_layers=2 or more, "
              "or leave dropout out.",
              "--dropout 0.5 acts between stacked layers, and --num-layers 1 has none: add --num-layers 2 or "
              "more, or leave --dropout out.")]
    for change, python, flags in cases:
        with pytest.raises(ConfigError) as e:
            Config(**change)
        assert str(e.value).startswith(python)
        with pytest.raises(ConfigError) as e, flag_spelling():
            Config(**change)
        assert str(e.value).startswith(flags)
        with pytest.raises(ConfigError) as e:       # put back, after an error too
            Config(**change)
        assert str(e.value).startswith(python)


def test_the_float32_range_s_edges_as_numpy_prints_them_are_taken():
    for value in (3.4028235e38, 1.1754944e-38):       # np.finfo(np.float32).max and .tiny
        assert Config(lr=value, clip=value).lr == value
