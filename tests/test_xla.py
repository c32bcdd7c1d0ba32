"""XLA's compiler options: which a training step gets, by rows per device and hidden units; per_module."""

import pytest

from rnnjax import xla
from rnnjax.xla import compiler_options


@pytest.mark.parametrize("avx512", [True, False])
@pytest.mark.cpu_devices(1)
def test_compiler_options_keep_dots_from_ynnpack_only_where_rows_per_device_outnumber_hiddens_fourfold(
        avx512, monkeypatch):
    monkeypatch.setattr(xla, "_cpu_has_avx512", lambda: avx512)
    o1 = xla._LLVM_O1
    fast = {**o1, **xla._YNN_CONVOLUTIONS_ONLY, **(xla._AVX512_VECTORS if avx512 else {})}
    # d2l's batch 1024 and 32 hiddens
    assert compiler_options(1024, 32, 1) == compiler_options(1024, 32, 2) == fast
    assert compiler_options(1024, 32, 8) == fast                   # 128 rows per device
    assert compiler_options(1024, 32, 16) == o1                    # 64 rows per device
    assert compiler_options(1024, 512, 2) == o1
    assert compiler_options(64, 32, 1) == o1


def test_per_module_makes_once_per_module_and_afresh_for_one_that_cannot_be_hashed():
    """What a step check, an init or a parameter count makes for a model: a cell with a list field cannot
    key a cache, and was once a TypeError."""
    import flax.linen as nn

    class Listed(nn.Module):
        sizes: list

    made = []

    @xla.per_module(maxsize=4)
    def make(module, n):
        made.append((module, n))
        return len(made)
    dense = nn.Dense(3)
    assert make(dense, 1) == make(nn.Dense(3), 1) == 1          # equal fields: the same module
    assert make(dense, 2) == 2 and make(nn.Dense(4), 1) == 3
    assert not xla.hashable(Listed([1])) and make(Listed([1]), 1) == 4 and make(Listed([1]), 1) == 5
    make.cache_clear()
    assert make(dense, 1) == 6
