"""Losses of the distillation engine on hand-made tensors and on a 1-D Gaussian DMD toy."""

import math

import pytest
import torch
from torch import nn

from omniforcing_core.train.losses import (
    CFG_CONVENTION,
    critic_flow_matching_loss,
    dmd_gradient,
    dmd_loss,
    flow_matching_loss,
    guided,
    ode_regression_loss,
    sample_sigma,
    weighted_sum,
)


def test_guided_is_the_ltx_convention():
    cond = torch.tensor([1.0, -2.0, 0.5])
    uncond = torch.tensor([0.0, 1.0, 0.5])
    assert CFG_CONVENTION == "ltx"
    assert torch.equal(guided(cond, uncond, 1.0), cond)
    # cond + (3 - 1) * (cond - uncond)
    assert torch.equal(guided(cond, uncond, 3.0), torch.tensor([3.0, -8.0, 0.5]))
    # Self-Forcing's cond + s * (cond - uncond) with s = 2 is our scale 3.
    assert torch.equal(guided(cond, uncond, 3.0), cond + 2.0 * (cond - uncond))


def test_flow_matching_loss_values():
    velocity = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x0 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    noise = torch.ones(2, 2)
    # target noise - x0 = [[1, 0], [0, 1]]; squared errors [[0, 4], [9, 9]]
    assert flow_matching_loss(velocity, x0, noise).item() == 5.5
    # per-sample mse [2, 9], weighted [1, 0], mean over the batch of 2
    assert flow_matching_loss(velocity, x0, noise, weight=torch.tensor([1.0, 0.0])).item() == 1.0
    assert flow_matching_loss(velocity, x0, noise, weight=torch.ones(2)).item() == 5.5
    with pytest.raises(ValueError, match="shape"):
        flow_matching_loss(velocity, x0, noise, weight=torch.ones(2, 1))
    assert flow_matching_loss(velocity.bfloat16(), x0, noise).dtype == torch.float32


def test_critic_loss_is_flow_matching_on_a_detached_sample():
    generator_weight = torch.tensor(2.0, requires_grad=True)
    sample = generator_weight * torch.tensor([[1.0, -1.0]])
    noise = torch.tensor([[0.5, 0.5]])
    velocity = torch.tensor([[0.0, 3.0]], requires_grad=True)
    with pytest.raises(ValueError, match="detach"):
        critic_flow_matching_loss(velocity, sample, noise)
    loss = critic_flow_matching_loss(velocity, sample.detach(), noise)
    # target [-1.5, 2.5]; squared errors [2.25, 0.25]
    assert loss.item() == 1.25
    assert torch.equal(loss, flow_matching_loss(velocity, sample.detach(), noise))


def test_ode_regression_loss_values_and_masks():
    pred = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    target = torch.zeros(2, 3)
    assert ode_regression_loss(pred, target).item() == pytest.approx(91 / 6)
    entries = torch.tensor([[True, True, False], [False, False, False]])
    assert ode_regression_loss(pred, target, entries).item() == 2.5
    per_sample = torch.tensor([[1.0], [0.0]])
    assert ode_regression_loss(pred, target, per_sample).item() == pytest.approx(14 / 3)
    # float weights are a weighted mean: (1 * 1 + 3 * 36) / (1 + 3)
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    assert ode_regression_loss(pred, target, weights).item() == 27.25


def test_ode_regression_mask_excludes_a_video_frame_and_an_all_false_mask_is_zero():
    torch.manual_seed(0)
    target = torch.randn(2, 3, 4, 2, 2)
    pred = (target + 0.1 * torch.randn_like(target)).requires_grad_()
    corrupted = pred.detach().clone()
    corrupted[:, :, 3] = 1e6  # a frame the mask drops, e.g. padding
    frames = torch.tensor([True, True, True, False]).view(1, 1, 4, 1, 1)
    expected = ((pred.detach() - target)[:, :, :3] ** 2).mean()
    assert ode_regression_loss(corrupted, target, frames).item() == pytest.approx(expected.item(), rel=1e-6)

    nothing = torch.zeros(2, 1, 1, 1, 1, dtype=torch.bool)
    loss = ode_regression_loss(pred, target, nothing)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_dmd_gradient_hand_values():
    x = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    real = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    fake = torch.tensor([[1.0, 1.0], [1.0, 4.0]])
    # mean|x - real| per sample: [1.5, 1.0]; fake - real: [[1, 0], [-1, 0]]
    grad = dmd_gradient(x, fake, real)
    assert grad.dtype == torch.float32
    assert torch.equal(grad, torch.tensor([[1 / 1.5, 0.0], [-1.0, 0.0]]))
    assert dmd_gradient(x.bfloat16(), fake, real).dtype == torch.bfloat16


def test_dmd_gradient_guards_zero_denominators_and_non_finite_scores():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    fake = torch.tensor([[1.0, 2.0], [float("nan"), 2.0]])
    # sample 0: x == real == fake (0 / 0 without the guard); sample 1: a NaN critic output
    grad = dmd_gradient(x, fake, x.clone())
    assert torch.equal(grad, torch.zeros(2, 2))
    # x == real but fake != real: a finite step, clamped by eps
    grad = dmd_gradient(x[:1], x[:1] + 1, x[:1], eps=1e-3)
    assert torch.equal(grad, torch.full((1, 2), 1e3))


def test_dmd_fake_equal_real_gives_exactly_zero_generator_gradient():
    torch.manual_seed(0)
    mean = torch.tensor(0.3, requires_grad=True)
    scale = torch.tensor(1.2, requires_grad=True)
    x = mean + scale * torch.randn(4, 3, 5)
    x0 = torch.randn(4, 3, 5)
    dmd_loss(x, x0, x0.clone()).backward()
    assert mean.grad.item() == 0.0
    assert scale.grad.item() == 0.0


def test_dmd_loss_gradient_is_the_dmd_gradient_over_numel_and_stops_at_the_scores():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    score_input = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    fake = score_input * 2 + 0.1
    real = score_input.sin()
    loss = dmd_loss(x, fake, real)
    loss.backward()
    assert loss.dtype == torch.float64
    expected = dmd_gradient(x, fake, real) / x.numel()
    assert (x.grad - expected).abs().max().item() < 1e-12
    assert score_input.grad is None
    assert not dmd_gradient(x, fake, real).requires_grad

    x32 = x.detach().float().requires_grad_()
    dmd_loss(x32, fake, real).backward()
    assert x32.grad.dtype == torch.float32


def test_weighted_sum():
    losses = {"video": torch.tensor(2.0), "audio": torch.tensor(3.0)}
    assert weighted_sum(losses, {"video": 1.0, "audio": 0.5}).item() == 3.5
    with pytest.raises(ValueError, match="differ"):
        weighted_sum(losses, {"video": 1.0})


def test_sample_sigma_bounds_reproducibility_and_shift():
    sigma = sample_sigma(20000, torch.Generator().manual_seed(0))
    assert sigma.dtype == torch.float32 and sigma.shape == (20000,)
    assert sigma.min().item() >= 0.02 and sigma.max().item() <= 0.98
    assert sigma.mean().item() == pytest.approx(0.5, abs=0.01)
    assert torch.equal(sigma, sample_sigma(20000, torch.Generator().manual_seed(0)))

    # LTX's shift mu = 2.05 as shift e^mu; u uniform between the bounds' pre-images, so the
    # median sigma is the LTX map of their midpoint.
    mu = 2.05
    shifted = sample_sigma(20000, torch.Generator().manual_seed(1), shift=math.exp(mu), low=0.1, high=0.9)
    assert shifted.min().item() >= 0.1 and shifted.max().item() <= 0.9
    pre_image = [s / (math.exp(mu) - (math.exp(mu) - 1) * s) for s in (0.1, 0.9)]
    u_mid = sum(pre_image) / 2
    ltx_median = math.exp(mu) / (math.exp(mu) + 1 / u_mid - 1)
    assert shifted.median().item() == pytest.approx(ltx_median, abs=0.01)
    assert ltx_median > 0.7  # unshifted it would be 0.5: the shift moves mass to high noise


# 1-D Gaussian toy: the generator is x = a + b * z, the target N(2, 0.5^2). Each step draws
# 16 samples of 16 iid elements, so the per-sample normaliser averages over 16 values.
TARGET_MEAN, TARGET_STD = 2.0, 0.5
SHAPE = (16, 16)


def gaussian_x0(x_t, t, mean, std):
    """E[x0 | x_t] for x0 ~ N(mean, std^2), x_t = (1 - t) x0 + t eps."""
    var = std * std
    return mean + (1 - t) * var / ((1 - t) ** 2 * var + t * t) * (x_t - (1 - t) * mean)


def critic_mlp():
    return nn.Sequential(nn.Linear(2, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))


def critic_x0(critic, x_t, t):
    velocity = critic(torch.stack([x_t, t.expand_as(x_t)], dim=-1)).squeeze(-1)
    return velocity, x_t - t * velocity


def train_toy(*, critic=None, critic_steps=5, steps=300, sign=1.0):
    """DMD on the toy; fake scores exact when ``critic`` is None. Returns (mean, std)."""
    torch.manual_seed(0)
    a = torch.zeros((), requires_grad=True)
    b = torch.ones((), requires_grad=True)
    optimizer = torch.optim.Adam([a, b], lr=0.03)
    # Linear decay so Adam's step-size noise does not dominate the final error.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / steps)

    def noised(x0):
        t = sample_sigma(SHAPE[0]).unsqueeze(1)
        noise = torch.randn(SHAPE)
        return (1 - t) * x0 + t * noise, t, noise

    if critic is not None:
        critic_optimizer = torch.optim.Adam(critic.parameters(), lr=1e-3)

        def critic_step():
            with torch.no_grad():
                x0 = a + b * torch.randn(SHAPE)
            x_t, t, noise = noised(x0)
            loss = critic_flow_matching_loss(critic_x0(critic, x_t, t)[0], x0, noise)
            critic_optimizer.zero_grad()
            loss.backward()
            critic_optimizer.step()

        for _ in range(300):  # pre-train on the initial generator (the teacher init stands in here)
            critic_step()

    for _ in range(steps):
        if critic is not None:
            for _ in range(critic_steps):
                critic_step()
        x = a + b * torch.randn(SHAPE)
        x_t, t, _ = noised(x.detach())
        with torch.no_grad():
            real = gaussian_x0(x_t, t, TARGET_MEAN, TARGET_STD)
            if critic is None:
                fake = gaussian_x0(x_t, t, a.detach(), b.detach().abs())
            else:
                fake = critic_x0(critic, x_t, t)[1]
        loss = sign * dmd_loss(x, fake, real)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return a.item(), abs(b.item())


def test_dmd_toy_with_exact_scores_reaches_the_target():
    mean, std = train_toy()
    assert mean == pytest.approx(TARGET_MEAN, rel=0.02)
    assert std == pytest.approx(TARGET_STD, rel=0.02)


def test_dmd_toy_with_a_learned_critic_reaches_the_target():
    torch.manual_seed(1)
    mean, std = train_toy(critic=critic_mlp())
    assert mean == pytest.approx(TARGET_MEAN, rel=0.05)
    assert std == pytest.approx(TARGET_STD, rel=0.05)


def test_dmd_toy_misses_the_target_when_the_critic_stops_tracking_the_generator():
    # The critic only knows the initial N(0, 1): proof that the learned-critic test depends
    # on the critic's flow-matching updates.
    torch.manual_seed(1)
    mean, std = train_toy(critic=critic_mlp(), critic_steps=0)
    assert abs(mean - TARGET_MEAN) > 0.5 or abs(std - TARGET_STD) > 0.25


def test_dmd_toy_with_the_gradient_sign_flipped_diverges():
    mean, std = train_toy(sign=-1.0)
    # it starts at distance 2 from the target mean with std 1
    assert abs(mean - TARGET_MEAN) > 4.0
    assert std > 4.0
