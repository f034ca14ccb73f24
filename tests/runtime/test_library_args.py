"""How runtime/library.py hands arrays to TVM: a 64-byte aligned copy taken over DLPack."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from ferrumc.runtime.library import aligned_copy


@pytest.mark.parametrize(
    "array",
    [
        np.array([7], np.int32),  # a decode step's one token
        np.arange(130, dtype=np.int32)[::-1],  # a negative stride: copied, not viewed
        np.arange(24, dtype=np.float16).reshape(2, 3, 4).transpose(2, 0, 1),
        np.zeros((0, 5), np.float32),  # empty: numpy may place it anywhere
        np.array(3.5, np.float32),  # 0-d
    ],
)
def test_aligned_copy_is_an_equal_aligned_independent_array(array):
    copy = aligned_copy(array)
    assert copy.ctypes.data % 64 == 0 or array.size == 0
    assert copy.flags.c_contiguous and copy.flags.writeable
    assert copy.dtype == array.dtype and copy.shape == array.shape
    np.testing.assert_array_equal(copy, array)
    if array.size:
        copy.reshape(-1)[0] += 1  # no memory shared with the caller's array
        assert not np.array_equal(copy, array)


def test_tvm_reads_the_aligned_copy_in_place():
    copy = aligned_copy(np.arange(5, dtype=np.int32))
    tensor = tvm.runtime.from_dlpack(copy)  # refuses memory that is not 64-byte aligned
    copy[0] = 42
    assert tensor.numpy()[0] == 42


def test_an_empty_argument_reaches_tvm_as_an_empty_tensor():
    """Empty arrays skip DLPack (TVM refuses an unaligned pointer, and numpy gives empty
    arrays any pointer)."""
    from ferrumc.runtime.library import Library

    library = Library.__new__(Library)  # _arg needs only the device
    library.device, library._on_host = tvm.cpu(), True
    tensor = library._arg(np.zeros((0, 5), np.float32))
    assert tuple(tensor.shape) == (0, 5)
