"""Losses of the distillation engine: flow matching, ODE regression, DMD, CFG, sigma sampling.

Conventions (rectified flow, as the LTX-2 teacher and the student use them):
``x_s = (1 - s) * x0 + s * eps``, the network predicts the velocity ``v ~ eps - x0``,
and ``x0 = x_s - s * v``.

Every loss here takes one stream's tensors (video ``[B, C, F, H, W]`` or audio
``[B, T, C]``) with the batch on dim 0 and returns a scalar; a stage combines the
streams with ``weighted_sum``.

The critic (fake score) loss is ``flow_matching_loss`` on detached generator samples;
``critic_flow_matching_loss`` is that call with the detach checked.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

CFG_CONVENTION = "ltx"
"""Classifier-free guidance in the LTX convention: ``cond + (scale - 1) * (cond - uncond)``.

Scale 1 means no guidance. Self-Forcing and CausVid write ``cond + s * (cond - uncond)``,
so their ``s`` is our ``scale - 1`` (Self-Forcing's 3.0 is LTX's 4.0). Scales in configs
and in the OmniForcing reference (video 3.0, audio 5.0) are in this convention.
"""


def guided(cond: Tensor, uncond: Tensor, scale: float | Tensor) -> Tensor:
    """Guided prediction ``cond + (scale - 1) * (cond - uncond)`` (``CFG_CONVENTION``).

    Works on x0 or velocity predictions alike (the map from one to the other is affine in
    the prediction for a fixed ``x_s`` and ``s``). ``scale == 1`` returns ``cond``; the
    other convention in the wild, ``cond + s * (cond - uncond)``, is ``guided(..., s + 1)``.
    """
    return cond + (scale - 1) * (cond - uncond)


def _loss_dtype(*tensors: Tensor) -> torch.dtype:
    # bf16/fp16 predictions are averaged in at least fp32: a mean over a whole latent in
    # bf16 loses most of its digits.
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _per_sample_mean(values: Tensor) -> Tensor:
    return values.flatten(1).mean(dim=1)


def flow_matching_loss(
    velocity_pred: Tensor, x0: Tensor, noise: Tensor, weight: Tensor | None = None
) -> Tensor:
    """Mean squared error of a velocity prediction against the target ``noise - x0``.

    Without ``weight`` this is the mean over all elements. ``weight`` ([B]) multiplies each
    sample's mean squared error before the mean over the batch (it is not renormalised, so
    all-ones equals no weight).
    """
    dtype = _loss_dtype(velocity_pred, x0, noise)
    error = (velocity_pred.to(dtype) - (noise.to(dtype) - x0.to(dtype))).square()
    if weight is None:
        return error.mean()
    if weight.shape != (error.shape[0],):
        raise ValueError(f"weight must have shape [B] = [{error.shape[0]}], got {list(weight.shape)}")
    return (_per_sample_mean(error) * weight.to(dtype)).mean()


def critic_flow_matching_loss(critic_velocity: Tensor, x0_generated: Tensor, noise: Tensor) -> Tensor:
    """The critic's (fake score's) loss: ``flow_matching_loss`` on a generator sample.

    The sample must already be detached: the critic's input ``x_s`` is built from it, so
    detaching only the target here would still let the critic loss reach the generator.
    """
    if x0_generated.requires_grad:
        raise ValueError(
            "critic_flow_matching_loss: the generator sample carries gradient; detach it "
            "before noising it into the critic's input"
        )
    return flow_matching_loss(critic_velocity, x0_generated, noise)


def ode_regression_loss(x0_pred: Tensor, x0_target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean squared error of the student's x0 against the teacher's, over valid entries.

    ``valid`` (bool, or float weights >= 0) broadcasts to the tensor's shape, e.g.
    ``[B, 1, F, 1, 1]`` for video frames or ``[B, T, 1]`` for audio; the loss is
    ``sum(valid * err) / sum(valid)`` over the broadcast mask, so sink tokens, padding or
    clean (sigma 0) blocks drop out. An all-false mask gives 0 (and a zero gradient).
    """
    dtype = _loss_dtype(x0_pred, x0_target)
    error = (x0_pred.to(dtype) - x0_target.to(dtype)).square()
    if valid is None:
        return error.mean()
    weights = torch.broadcast_to(valid.to(dtype), error.shape)
    # Where the whole mask is zero the numerator is exactly 0 with a zero gradient, so
    # clamping the denominator gives 0 instead of 0/0.
    return (weights * error).sum() / weights.sum().clamp_min(torch.finfo(dtype).tiny)


def _dmd_gradient64(x: Tensor, x0_fake: Tensor, x0_real: Tensor, eps: float) -> Tensor:
    x64 = x.detach().double()
    real = x0_real.detach().double()
    fake = x0_fake.detach().double()
    # Per sample, over all its elements (DMD2 / Self-Forcing / OmniForcing): the teacher's
    # distance to the sample sets the step size, so the update is scale-free per sample.
    dims = tuple(range(1, x64.dim()))
    normaliser = (x64 - real).abs().mean(dim=dims, keepdim=True).clamp_min(eps)
    grad = (fake - real) / normaliser
    # A non-finite teacher or critic output gives no update rather than a NaN step.
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def dmd_gradient(x: Tensor, x0_fake: Tensor, x0_real: Tensor, *, eps: float = 1e-8) -> Tensor:
    """The DMD generator gradient ``(x0_fake - x0_real) / mean|x - x0_real|``.

    ``x`` is the generator's clean sample, ``x0_fake`` and ``x0_real`` the critic's and the
    (guided) teacher's x0 predictions on ``x`` re-noised. The mean runs per sample over all
    non-batch dims; the arithmetic is in float64, the normaliser is clamped at ``eps`` and
    non-finite entries become 0. Detached, in ``x``'s dtype.
    """
    return _dmd_gradient64(x, x0_fake, x0_real, eps).to(x.dtype)


def dmd_loss(x: Tensor, x0_fake: Tensor, x0_real: Tensor, *, eps: float = 1e-8) -> Tensor:
    """``0.5 * mse(x, stopgrad(x - dmd_gradient))`` in float64 (a float64 scalar).

    Its gradient w.r.t. ``x`` is ``dmd_gradient / x.numel()``; nothing flows into
    ``x0_fake`` or ``x0_real``.
    """
    x64 = x.double()
    target = (x64 - _dmd_gradient64(x, x0_fake, x0_real, eps)).detach()
    return 0.5 * (x64 - target).square().mean()


def weighted_sum(losses: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """``sum(weights[k] * losses[k])``; both mappings must name the same streams.

    No default weights: a stream left out of ``weights`` is an error, not a silent 0.
    """
    if set(losses) != set(weights):
        raise ValueError(f"loss streams {sorted(losses)} and weight streams {sorted(weights)} differ")
    if not losses:
        raise ValueError("weighted_sum needs at least one loss")
    return sum(weights[name] * losses[name] for name in losses)


def _shift(u: Tensor, shift: float) -> Tensor:
    return shift * u / (1 + (shift - 1) * u)


def sample_sigma(
    batch: int,
    generator: torch.Generator | None = None,
    *,
    shift: float | None = None,
    low: float = 0.02,
    high: float = 0.98,
    device: torch.device | str | None = None,
) -> Tensor:
    """Per-sample training noise levels ``[batch]`` (float32) in ``[low, high]``.

    ``u ~ U`` then ``sigma = shift * u / (1 + (shift - 1) * u)`` (``shift=None`` means 1:
    uniform sigma). This is the same map as the LTX-2 scheduler's
    ``e^mu / (e^mu + 1/u - 1)`` with ``shift = e^mu`` (``schedule.ltx2_sigmas``'s
    mu = 2.05 at 4096 tokens is shift 7.8), and Self-Forcing's ``shift 5``. ``u`` is drawn
    uniformly between the pre-images of ``low`` and ``high``, so sigma stays in
    ``[low, high]`` without piling mass on the bounds. The default bounds are DMD2's and
    the references' 2% / 98% (scores are never evaluated at exactly 0 or 1).
    """
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}")
    shift = 1.0 if shift is None else float(shift)
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    # Pre-images of the bounds (the shift map's inverse is the map with 1 / shift).
    u_low, u_high = (v / (shift - (shift - 1) * v) for v in (low, high))
    u = u_low + (u_high - u_low) * torch.rand(batch, generator=generator, dtype=torch.float64, device=device)
    # The clamp only absorbs rounding at the bounds.
    return _shift(u, shift).clamp(low, high).float()
