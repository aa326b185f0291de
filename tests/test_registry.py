import pytest

from qpolicy.errors import ConfigError, UnknownNameError
from qpolicy.registry import Registry


def test_register_get_names():
    reg: Registry[int] = Registry("metric")

    @reg.register("alpha")
    def alpha():
        return 1

    reg.add("beta", 2)
    assert reg.get("alpha") is alpha
    assert reg.names() == ["alpha", "beta"]
    assert "beta" in reg and len(reg) == 2


def test_duplicate_is_an_error():
    reg: Registry[int] = Registry("metric")
    reg.add("x", 1)
    with pytest.raises(ConfigError, match="already registered"):
        reg.add("x", 2)


def test_unknown_name_suggests_close_match_and_lists_known():
    reg: Registry[int] = Registry("strategy")
    for n in ("ilp", "uniform", "random"):
        reg.add(n, 0)
    with pytest.raises(UnknownNameError) as e:
        reg.get("unifrom")
    msg = str(e.value)
    assert "unknown strategy 'unifrom'" in msg and "did you mean 'uniform'" in msg and "ilp" in msg
    assert isinstance(e.value, KeyError)
