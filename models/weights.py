"""Seeded, data-calibrated random weights, so untrained test models behave like trained ones.

Plain random init leaves BatchNorm as identity and lets activations drift (dead ReLUs, saturated
gates, logits that ignore the input). Calibrating the BN statistics on a seeded batch of smooth
random images, jittering the affine parameters, and scaling the head to a fixed logit spread gives
every model live activations and input-dependent predictions, reproducibly per seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

LOGIT_STD = 2.0


def calibration_batch(shape: tuple[int, int, int], layout: str, seed: int, batch: int = 8) -> torch.Tensor:
    """Seeded smooth random images (low-frequency blobs + a little noise), `(batch, *shape)`."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape if layout == "NCHW" else (shape[2], shape[0], shape[1])
    low = torch.randn(batch, c, max(h // 8, 2), max(w // 8, 2), generator=g)
    x = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    x = x + 0.3 * torch.randn(batch, c, h, w, generator=g)
    return x if layout == "NCHW" else x.permute(0, 2, 3, 1).contiguous()


def _norm_affines(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of every BatchNorm / LayerNorm / channels-first LayerNorm in ``model``."""
    out = []
    for m in model.modules():
        weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
        if "Norm" in type(m).__name__ and isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor):
            out.append((weight, bias))
    return out


@torch.no_grad()
def calibrate(
    model: nn.Module,
    head: str,
    shape: tuple[int, int, int],
    layout: str,
    seed: int,
) -> nn.Module:
    """Set BN stats from a seeded batch, jitter norm affines, scale ``head`` to `LOGIT_STD`; eval mode."""
    g = torch.Generator().manual_seed(seed + 1)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for weight, bias in _norm_affines(model):
        # Jitter before calibrating so the stats see the real affine of upstream layers.
        weight.copy_(1.0 + 0.2 * torch.randn(weight.shape, generator=g))
        bias.copy_(0.1 * torch.randn(bias.shape, generator=g))
    x = calibration_batch(shape, layout, seed)
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch sets the stats exactly
    # In train mode each BN normalises with the batch stats it records, so downstream layers
    # already see what they will see in eval mode: one pass calibrates the whole depth.
    model.train()
    model(x)
    model.eval()
    for bn in bns:
        bn.momentum = 0.1
        # Off-by-a-bit stats, so the folded BN is not a pure standardisation.
        assert bn.running_mean is not None
        bn.running_mean.add_(0.05 * torch.randn(bn.running_mean.shape, generator=g))
    out = model(x)
    head_mod = model.get_submodule(head)
    assert isinstance(head_mod, nn.Linear | nn.Conv2d) and head_mod.bias is not None
    # Centre each class over the batch, else a constant per-class offset decides the argmax
    # for every input; then scale so the logits spread by LOGIT_STD.
    per_class = out.transpose(0, 1).reshape(out.shape[1], -1)
    centred = per_class - per_class.mean(1, keepdim=True)
    scale = LOGIT_STD / float(centred.std())
    head_mod.bias.sub_(per_class.mean(1)).mul_(scale)
    head_mod.weight.mul_(scale)
    return model


def seeded(make: Callable[[], nn.Module], head: str, shape: tuple[int, int, int], layout: str, seed: int) -> nn.Module:
    """Build ``make()`` under ``seed`` and calibrate it; same weights on every call."""
    with torch.random.fork_rng():  # leave the caller's global RNG stream untouched
        torch.manual_seed(seed)
        model = make()
    return calibrate(model, head, shape, layout, seed)
