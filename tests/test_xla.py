"""XLA's compiler options: which a training step gets, by rows per device and hidden units."""

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
