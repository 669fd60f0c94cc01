"""The integer codes of the operators agree between Python (i2i_fast/codes.py) and the C++/CUDA
kernels (csrc/codes.h, exported by the extension as i2i_fast._C.CODES): every enum, every
member, both directions."""

import pytest

from i2i_fast import _backend, codes

pytestmark = pytest.mark.skipif(_backend._C is None, reason="i2i_fast._C not built")


def test_same_enums():
    assert set(_backend._C.CODES) == {e.__name__ for e in codes.ALL}


@pytest.mark.parametrize("enum", codes.ALL, ids=lambda e: e.__name__)
def test_same_members(enum):
    cpp = _backend._C.CODES[enum.__name__]
    assert cpp == {m.name: m.value for m in enum}  # every Python member in C++, same value
    for name, value in cpp.items():  # every C++ member in Python, same value
        assert enum[name] == value and type(value) is int
