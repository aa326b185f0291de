"""``apply_policy``: a calibrated fake-quantized copy of a model under a policy."""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .._modes import eval_mode
from ..errors import CalibrationError
from ..policy import Policy
from ..task import CLASSIFICATION, Task, call, move, task_of
from .fake_quant import ActQuantizer, CalibConfig, QuantConv2d, QuantLinear, WeightQuantizer

__all__ = ["apply_policy", "calibrate_", "calibrate_bn_and_acts_", "quantizers", "batch_inputs"]

log = logging.getLogger(__name__)


def batch_inputs(batch: Any, task: Task = CLASSIFICATION) -> Any:
    """The model inputs of a batch under ``task`` (default: a tensor, or the first element of ``(x, y, ...)``)."""
    return task.inputs(batch)


def quantizers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, quantizer)`` for every weight and activation quantizer in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (WeightQuantizer, ActQuantizer))]


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _reestimate_bn(model: nn.Module, batches: list[Any], *, batchquant: bool = False) -> None:
    """Recompute every BatchNorm's running mean/var as the plain average over ``batches`` (and with ``batchquant``
    every BatchQuant quantizer's running range: the quantized network as it trains, batch statistics throughout)."""
    from .batchquant import BatchQuantizer

    kinds = (nn.modules.batchnorm._BatchNorm, BatchQuantizer) if batchquant else (nn.modules.batchnorm._BatchNorm,)
    mods = [m for m in model.modules() if isinstance(m, kinds) and getattr(m, "track_running_stats", True)]
    if not mods:
        return
    momenta = {m: m.momentum for m in mods}
    for m in mods:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
        m.train()
    try:
        for x in batches:
            call(model, x)
    finally:
        for m in mods:
            m.momentum = momenta[m]
            m.eval()


@torch.no_grad()
def calibrate_(model: nn.Module, calib: Iterable[Any] | None, config: CalibConfig | None = None) -> nn.Module:
    """Calibrate every quantizer of a fake-quant model in place, in three steps:

    1. weight step sizes from the weights (``config.weight_method``);
    2. if ``config.bn_reestimate``: BatchNorm statistics re-estimated on the weight-quantized model (activations
       still float), since quantized weights shift each layer's output distribution;
    3. activation step sizes from what each quantized layer's input looks like in that model
       (``config.act_method``), with activation quantizers passing their inputs through while they observe.

    Steps 2-3 use the first ``config.bn_batches`` / ``config.batches`` batches of ``calib`` (held in memory once,
    so a one-shot iterator works too) and run in eval mode; the model's train/eval modes are restored afterwards.
    """
    config = config or CalibConfig()
    for _, m in model.named_modules():
        if isinstance(m, (QuantConv2d, QuantLinear)) and m.weight_quant is not None:
            m.weight_quant.calibrate_(m.weight, config)
    acts = [m for _, m in quantizers(model) if isinstance(m, ActQuantizer)]
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if not acts and not (config.bn_reestimate and has_bn):
        return model
    if calib is None:
        if acts:
            raise CalibrationError("the policy quantizes activations, which needs calibration data (calib=...)")
        log.warning("no calibration data: BatchNorm statistics are not re-estimated")
        return model
    device = _device(model)
    n_bn = config.bn_batches if config.bn_reestimate else 0
    task = task_of(calib)
    batches = [move(task.inputs(b), device) for b in itertools.islice(calib, config.batches_needed)]
    if not batches:
        raise CalibrationError("the calibration data yielded no batch")
    calibrate_bn_and_acts_(model, acts, batches, config)
    log.info("BatchNorm re-estimated on %d batches; %d activation quantizers calibrated on %d batches",
             n_bn, len(acts), min(len(batches), config.batches))
    return model


def calibrate_bn_and_acts_(model: nn.Module, acts: list[ActQuantizer], batches: list[Any],
                           config: CalibConfig) -> None:
    """Steps 2-3 of :func:`calibrate_`: BatchNorm statistics re-estimated with the activation quantizers passing
    their inputs through, then the activation quantizers observe ``batches[:config.batches]``. Eval mode; the
    model's modes and the quantizers' flags are restored even on error."""
    try:
        with eval_mode(model):
            for a in acts:
                a.enabled = False
            if config.bn_reestimate:
                _reestimate_bn(model, batches[: config.bn_batches])
            for a in acts:
                a.enabled = True
                a.start_calibration_(config)
            for x in batches[: config.batches]:
                call(model, x)
            for a in acts:
                a.finish_calibration_()
    finally:
        for a in acts:
            a.observing, a.enabled = False, True


def apply_policy(
    model: nn.Module,
    policy: Policy,
    *,
    calib: Iterable[Any] | None = None,
    config: CalibConfig | None = None,
    learnable: bool = True,
) -> nn.Module:
    """Return a fake-quantized copy of ``model`` under ``policy``; ``model`` itself is not touched.

    Args:
        model: Float model.
        policy: Bits per quantizable layer; must name exactly the model's quantizable layers.
        calib: Batches for calibration (tensors, ``(x, y)`` tuples, or a :class:`qpolicy.Data` whose
            ``transform`` gives the model inputs); required when any layer quantizes activations.
        config: Calibration rules; default :class:`CalibConfig` (MSE-optimal clipping).
        learnable: Make step sizes trainable parameters (LSQ) for fine-tuning.

    Returns:
        The quantized copy, in the same train/eval mode as ``model``.
    """
    policy.validate(model)
    config = config or CalibConfig()
    qmodel = copy.deepcopy(model)
    for name, bits in policy.layers.items():
        if bits.is_float:
            continue
        mod = qmodel.get_submodule(name)
        cls = QuantConv2d if isinstance(mod, nn.Conv2d) else QuantLinear
        qmod = cls.from_float(mod, weight_bits=bits.weight_bits, act_bits=bits.act_bits, learnable=learnable,
                              act_quantizer=config.act_quantizer)
        parent_name, _, attr = name.rpartition(".")
        setattr(qmodel.get_submodule(parent_name) if parent_name else qmodel, attr, qmod)
    return calibrate_(qmodel, calib, config)
