"""PyTorch state dicts in and out, without torch (and against torch itself where it is installed)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY
from rnnjax import cells
from rnnjax.interop import from_torch, to_torch
from rnnjax.state import create_train_state, make_model
from test_model import np_stack

V, H = 11, 6
SHAPES = [("rnn", 1, False), ("gru", 1, False), ("lstm", 1, False), ("gru", 2, False), ("lstm", 2, True),
          ("rnn", 3, True)]


def config_of(cell, num_layers, bidirectional):
    return TINY.replace(cell=cell, num_hiddens=H, num_layers=num_layers, bidirectional=bidirectional)


def known_state_dict(cell, num_layers, bidirectional, prefix="rnn.rnn.", seed=0):
    """A PyTorch-shaped state dict of random known arrays."""
    rng = np.random.default_rng(seed)
    gates, dirs = {"rnn": 1, "gru": 3, "lstm": 4}[cell], 2 if bidirectional else 1
    sd = {}
    for k in range(num_layers):
        for d in range(dirs):
            s = f"l{k}" + ("_reverse" if d else "")
            n_in = V if k == 0 else H * dirs
            sd.update({f"{prefix}weight_ih_{s}": rng.normal(size=(gates * H, n_in)),
                       f"{prefix}weight_hh_{s}": rng.normal(size=(gates * H, H)),
                       f"{prefix}bias_ih_{s}": rng.normal(size=gates * H),
                       f"{prefix}bias_hh_{s}": rng.normal(size=gates * H)})
    sd.update({"linear.weight": rng.normal(size=(V, H * dirs)), "linear.bias": rng.normal(size=V)})
    return {k: (0.4 * v).astype(np.float32) for k, v in sd.items()}


def np_logits(cell, num_layers, bidirectional, sd, X_BxT, prefix="rnn.rnn."):
    """PyTorch's model, d2l's RNNLM, from the state dict in NumPy: one-hot, the layer, the Linear."""
    dirs = 2 if bidirectional else 1
    params = {}
    for k in range(num_layers):
        for d in range(dirs):
            s = f"l{k}" + ("_reverse" if d else "")
            w_ih, w_hh = sd[f"{prefix}weight_ih_{s}"], sd[f"{prefix}weight_hh_{s}"]
            b_ih, b_hh = sd[f"{prefix}bias_ih_{s}"], sd[f"{prefix}bias_hh_{s}"]
            p = ({"W_xh": w_ih.T, "W_hh": w_hh.T, "b_h": b_ih + b_hh} if cell == "rnn"
                 else {"W_ih": w_ih.T, "W_hh": w_hh.T, "b_ih": b_ih, "b_hh": b_hh})
            params[f"layers_{k * dirs + d}"] = {"cell": p}
    zeros = np.zeros((X_BxT.shape[0], H))
    carries = [(zeros, zeros) if cell == "lstm" else zeros] * (num_layers * dirs)
    outputs, _ = np_stack(cell, params, np.eye(V)[X_BxT.T], num_layers, bidirectional, carries)
    return (outputs @ sd["linear.weight"].T.astype(np.float64) + sd["linear.bias"]).swapaxes(0, 1)


@pytest.mark.parametrize("cell,num_layers,bidirectional", SHAPES)
def test_round_trip_and_numpy_reference(cell, num_layers, bidirectional):
    config = config_of(cell, num_layers, bidirectional)
    sd = known_state_dict(cell, num_layers, bidirectional)
    params = from_torch(sd, config)
    back = to_torch(params, config)
    assert set(back) == set(sd)
    for k, v in sd.items():
        if cell == "rnn" and "bias" in k and "linear" not in k:
            continue                        # one bias in rnnjax: b_ih + b_hh goes to bias_ih
        np.testing.assert_array_equal(back[k], v)
    if cell == "rnn":
        for k in sd:
            if "bias_ih" in k:
                hh = k.replace("bias_ih", "bias_hh")
                np.testing.assert_allclose(back[k], sd[k] + sd[hh], rtol=1e-6)
                assert not back[hh].any()
    for a, b in zip(jax.tree.leaves(from_torch(back, config)), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)

    X = np.random.default_rng(1).integers(0, V, (3, 7))
    logits = make_model(config, V).apply({"params": params}, jnp.asarray(X))
    expected = np_logits(cell, num_layers, bidirectional, sd, X)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_any_prefix_and_clear_errors():
    config = config_of("gru", 2, False)
    sd = known_state_dict("gru", 2, False, prefix="model.encoder.")
    sd = {k.replace("linear.", "decoder.out."): v for k, v in sd.items()}
    params = from_torch(sd, config)
    assert params["rnn"]["layers_1"]["cell"]["W_ih"].shape == (H, 3 * H)
    with pytest.raises(ValueError, match="exactly one key ending in 'weight_ih_l1'; found none"):
        from_torch(known_state_dict("gru", 1, False), config)
    with pytest.raises(ValueError, match="do not fit the config"):
        from_torch(sd, config.replace(num_hiddens=H + 1))
    with pytest.raises(ValueError, match="exactly one output layer's 'weight'"):
        from_torch({**sd, "other.weight": sd["decoder.out.weight"]}, config)


def test_rnnjax_params_go_to_torch_and_back():
    config = config_of("lstm", 2, False)
    params = create_train_state(config, V).params
    for a, b in zip(jax.tree.leaves(from_torch(to_torch(params, config), config)), jax.tree.leaves(params),
                    strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell,num_layers,bidirectional", SHAPES)
def test_against_torch_itself(cell, num_layers, bidirectional):
    torch = pytest.importorskip("torch")
    modules = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}
    torch.manual_seed(0)
    rnn = modules[cell](V, H, num_layers=num_layers, bidirectional=bidirectional)
    linear = torch.nn.Linear(H * (2 if bidirectional else 1), V)
    sd = {**{f"rnn.rnn.{k}": v.detach().numpy() for k, v in rnn.state_dict().items()},
          **{f"linear.{k}": v.detach().numpy() for k, v in linear.state_dict().items()}}
    X = np.random.default_rng(2).integers(0, V, (4, 9))
    with torch.no_grad():
        out, _ = rnn(torch.nn.functional.one_hot(torch.tensor(X.T), V).float())
        expected = linear(out).swapaxes(0, 1).numpy()
    config = config_of(cell, num_layers, bidirectional)
    logits = make_model(config, V).apply({"params": from_torch(sd, config)}, jnp.asarray(X))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_nan_weights_are_refused():
    sd = known_state_dict("gru", 1, False)
    sd["rnn.rnn.weight_hh_l0"][2, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite weights .*W_hh"):
        from_torch(sd, config_of("gru", 1, False))


@pytest.mark.parametrize("other", [config_of("rnn", 1, False).replace(num_hiddens=H + 1),
                                   config_of("gru", 1, False), config_of("rnn", 2, False)])
def test_to_torch_refuses_params_of_another_config(other):
    params = from_torch(known_state_dict("rnn", 1, False), config_of("rnn", 1, False))
    with pytest.raises(ValueError, match="do not fit the config|not those of an RNNLM"):
        to_torch(params, other)


def test_weights_the_config_has_no_place_for_are_refused_not_dropped():
    """A 2-layer LSTM's state dict converted with num_layers=1 dropped layer 2 (logits 0.18 off torch's)."""
    sd = known_state_dict("lstm", 2, False)
    says = (r"has weights the config's model has none of \(rnn\.rnn\.bias_hh_l1, rnn\.rnn\.bias_ih_l1, "
            r"rnn\.rnn\.weight_hh_l1, rnn\.rnn\.weight_ih_l1\): give the config PyTorch's num_layers")
    with pytest.raises(ValueError, match=says):
        from_torch(sd, config_of("lstm", 1, False))
    with pytest.raises(ValueError, match=r"none of \(rnn\.rnn\.bias_hh_l1, .*, \.\.\.\)"):  # 3 as 1
        from_torch(known_state_dict("lstm", 3, False), config_of("lstm", 1, False))
    sd["rnn.rnn.weight_hr_l0"] = np.zeros((3, H), np.float32)          # nn.LSTM(proj_size=3)'s
    with pytest.raises(ValueError, match=r"none of \(rnn\.rnn\.weight_hr_l0\).*proj_size has no"):
        from_torch(sd, config_of("lstm", 2, False))


def test_a_cell_of_ones_own_is_refused_in_one_sentence_both_ways(monkeypatch):
    """A registered flax cell passed check_params, then failed with a bare KeyError in to_torch."""
    monkeypatch.setitem(cells.CELLS, "mgu", nn.MGUCell)
    config = TINY.replace(cell="mgu", num_hiddens=H)
    says = r"converts rnnjax's own cells \(rnn, gru, lstm\), .*; the config's cell 'mgu' is MGUCell\."
    with pytest.raises(ValueError, match=says):
        to_torch(create_train_state(config, V).params, config)
    with pytest.raises(ValueError, match=says):
        from_torch(known_state_dict("gru", 1, False), config)
    monkeypatch.setitem(cells.CELLS, "gru", nn.GRUCell)              # flax's under rnnjax's name
    with pytest.raises(ValueError, match="the config's cell 'gru' is GRUCell"):
        from_torch(known_state_dict("gru", 1, False), config_of("gru", 1, False))


class FakeTensor:
    """What from_torch asks of a torch tensor (bfloat16, or one that needs grad, has no NumPy view)."""

    def __init__(self, array):
        self.array = array

    def detach(self):
        return self

    def cpu(self):
        return self

    def float(self):
        return FakeTensor(np.asarray(self.array, np.float32))

    def numpy(self):
        return self.array


class FakeModule:
    """A torch module as from_torch reads one: its state dict, and its recurrent layers' settings."""

    def __init__(self, state_dict, mode, num_layers=1, bidirectional=False):
        self.sd, self.mode, self.num_layers, self.bidirectional = state_dict, mode, num_layers, bidirectional

    def state_dict(self):
        return {k: FakeTensor(v) for k, v in self.sd.items()}

    def modules(self):
        return iter([self])


def test_a_module_tensors_and_bias_free_layers_convert_and_settings_a_dict_lacks_are_checked():
    """A PyTorch user's second day: relu's nn.RNN converted silently at tanh (logits 0.22 off torch's);
    bfloat16 tensors, ones that need grad and the module itself failed in torch's own errors; bias=False
    was a missing key."""
    config = config_of("rnn", 2, True)
    sd = known_state_dict("rnn", 2, True)
    expected = from_torch(sd, config)
    for given in (FakeModule(sd, "RNN_TANH", 2, True), {k: FakeTensor(v) for k, v in sd.items()}):
        for a, b in zip(jax.tree.leaves(from_torch(given, config)), jax.tree.leaves(expected), strict=True):
            np.testing.assert_array_equal(a, b)
    for mode, num_layers, bidirectional, said in (
            ("RNN_RELU", 2, True, "has nonlinearity 'relu'; the config nonlinearity 'tanh'"),
            ("GRU", 1, True, "has cell 'gru', num_layers 1; the config cell 'rnn', num_layers 2"),
            ("RNN_TANH", 2, False, "has bidirectional False; the config bidirectional True")):
        with pytest.raises(ValueError, match=rf"^The module's FakeModule {said}: give the config the module"):
            from_torch(FakeModule(sd, mode, num_layers, bidirectional), config)
    relu = config.replace(nonlinearity="relu")
    relu_params = from_torch(FakeModule(sd, "RNN_RELU", 2, True), relu)
    assert jax.tree.structure(relu_params) == jax.tree.structure(expected)
    bias_free = {k: v for k, v in sd.items() if "bias" not in k}      # nn.RNN and nn.Linear of bias=False
    zeroed = {k: np.zeros_like(v) if "bias" in k else v for k, v in sd.items()}
    zeros = jax.tree.leaves(from_torch(zeroed, config))
    for a, b in zip(jax.tree.leaves(from_torch(bias_free, config)), zeros, strict=True):
        np.testing.assert_array_equal(a, b)
    one_lost = {k: v for k, v in sd.items() if k != "rnn.rnn.bias_hh_l1"}       # not bias=False: no zeros
    with pytest.raises(ValueError, match="exactly one key ending in 'bias_hh_l1'; found none"):
        from_torch(one_lost, config)


def test_a_training_checkpoint_or_entries_that_are_not_weights_say_what_to_give():
    config = config_of("gru", 1, False)
    sd = known_state_dict("gru", 1, False)
    said = (r"^The state dict holds dicts \('model', 'optimizer'\), as a training checkpoint does: give the "
            r"model's own, checkpoint\['model'\] say\.$")
    with pytest.raises(ValueError, match=said):
        from_torch({"model": sd, "optimizer": {}, "epoch": 3}, config)
    said = (r"^The state dict has entries that are not weights of an nn.RNN, nn.GRU or nn.LSTM and its "
            r"output nn.Linear \(bn.num_batches_tracked, step\): give those modules' state dict alone\.$")
    with pytest.raises(ValueError, match=said):         # it said to give the config PyTorch's num_layers
        from_torch({**sd, "step": 7, "bn.num_batches_tracked": np.int64(3)}, config)
    said = r"^from_torch takes a PyTorch module, its state_dict\(\) or a dict of arrays, got a list\.$"
    with pytest.raises(TypeError, match=said):
        from_torch(list(sd.values()), config)

    class Adam:                 # an optimizer has a state_dict too: AttributeError 'modules', before
        def state_dict(self):
            return {"state": {}, "param_groups": []}
    with pytest.raises(TypeError, match=said.replace("a list", "an Adam")):
        from_torch(Adam(), config)
    with pytest.raises(ValueError, match=r"^The state dict is an optimizer's \(param_groups\): give the "):
        from_torch(Adam().state_dict(), config)         # it said to give checkpoint['state']


def test_to_torch_gives_arrays_torch_may_write():
    """Its biases were read-only views of JAX's arrays: torch.from_numpy warned of undefined behaviour."""
    config = config_of("lstm", 1, False)
    assert all(v.flags.writeable and v.flags.c_contiguous
               for v in to_torch(create_train_state(config, V).params, config).values())


def test_a_torch_module_in_bfloat16_converts_as_its_float32_weights():
    torch = pytest.importorskip("torch")

    class RNNLM(torch.nn.Module):       # d2l's, of a relu nn.RNN without biases
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.RNN(V, H, nonlinearity="relu", bias=False)
            self.linear = torch.nn.Linear(H, V)

    torch.manual_seed(0)
    model = RNNLM()
    config = config_of("rnn", 1, False).replace(nonlinearity="relu")
    X = np.random.default_rng(2).integers(0, V, (4, 9))
    with torch.no_grad():
        out, _ = model.rnn(torch.nn.functional.one_hot(torch.tensor(X.T), V).float())
        expected = model.linear(out).swapaxes(0, 1).numpy()
    logits = make_model(config, V).apply({"params": from_torch(model, config)}, jnp.asarray(X))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    halved = from_torch(model.to(torch.bfloat16), config)          # the tensors need grad, too
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(halved))
