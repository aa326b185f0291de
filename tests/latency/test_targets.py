import pytest

from qpolicy.errors import ConfigError, UnknownNameError
from qpolicy.latency import PRECISIONS, TARGETS, precision_of, target


@pytest.mark.parametrize(("bits", "precision"), [
    ((None, None), "float"), ((4, None), "float"), ((8, 8), "int8w8"), ((7, 8), "int8"), ((2, 8), "int8"),
    ((4, 4), None), ((8, 16), None), ((None, 8), None)])
def test_which_kernel_a_layer_takes(bits, precision):
    assert precision_of(*bits) == precision


def test_every_registered_target_names_its_precisions_and_provider():
    for name in TARGETS.names():
        t = target(name)
        assert t.name == name and t.provider.endswith("ExecutionProvider")
        assert set(t.precisions) <= set(PRECISIONS) and "int8" in t.precisions


def test_unknown_and_unavailable_targets():
    with pytest.raises(UnknownNameError, match="ort-cpu"):
        target("ort-cpus")
    pytest.importorskip("onnxruntime")
    target("ort-cpu").check()
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ConfigError, match="lacks .*onnxruntime-gpu"):
            target("ort-cuda").check()
