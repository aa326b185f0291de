"""Deployment targets a latency table is measured on, and which precision of theirs each layer of a policy takes.

A target is a runtime and a device (``ort-cpu``: onnxruntime's CPU execution provider). Its precisions are the
kernels it has for a Conv/Linear layer, named by what a policy gives the layer:

* ``float``: float kernels (the policy's ``f`` activations; the weights are float or fake-quantized, the same
  operator either way);
* ``int8``: 8-bit inputs and weights of 2..7 bits, held in int8: onnxruntime's u8s8 kernels;
* ``int8w8``: 8-bit inputs and 8-bit weights, held in uint8: its u8u8 kernels (exact where u8s8 could saturate).

Any other pair (4-bit activations, 16-bit activations, quantized inputs with float weights) has no kernel of its own
on these runtimes: a latency budget leaves it out. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..registry import Registry

__all__ = ["Target", "TARGETS", "PRECISIONS", "precision_of"]

PRECISIONS = {"float": "float kernels (activations f)",
              "int8": "8-bit inputs, weights of 2..7 bits (int8 weights: u8s8 kernels)",
              "int8w8": "8-bit inputs and weights (uint8 weights: u8u8 kernels)"}


def precision_of(weight_bits: int | None, act_bits: int | None) -> str | None:
    """The target precision a layer at (weight bits, act bits) runs in; None where no kernel runs it as such."""
    if act_bits is None:
        return "float"
    if act_bits == 8 and weight_bits is not None:
        return "int8w8" if weight_bits == 8 else "int8"
    return None


@dataclass(frozen=True, kw_only=True)
class Target:
    """An onnxruntime execution provider measured as a deployment target."""

    name: str
    provider: str
    description: str
    precisions: tuple[str, ...] = tuple(PRECISIONS)

    def check(self) -> None:
        """Raise ConfigError (before any work) when this machine's onnxruntime cannot run the target."""
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - depends on the installation
            raise ConfigError(f"target {self.name} needs onnxruntime (pip install 'qpolicy[onnx]'): {e}") from None
        have = ort.get_available_providers()
        if self.provider not in have:
            raise ConfigError(f"target {self.name} needs onnxruntime's {self.provider}, which this installation "
                              f"lacks (it has {', '.join(have)}); for CUDA install onnxruntime-gpu")

    def session(self, path: str, threads: int = 0) -> Any:
        """An inference session on this target (``threads`` 0: the runtime's default)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        return ort.InferenceSession(path, opts, providers=[self.provider])


TARGETS: Registry[Target] = Registry("latency target")
TARGETS.add("ort-cpu", Target(name="ort-cpu", provider="CPUExecutionProvider",
                              description="onnxruntime, CPU execution provider"))
TARGETS.add("ort-cuda", Target(name="ort-cuda", provider="CUDAExecutionProvider",
                               description="onnxruntime, CUDA execution provider (integer operators it lacks run on "
                                           "the CPU, which the measurement includes)"))


def target(name: str) -> Target:
    """The registered target ``name`` (unknown names get suggestions)."""
    if not isinstance(name, str):
        raise ConfigError(f"target must be a name such as 'ort-cpu', got {name!r}")
    return TARGETS.get(name)
