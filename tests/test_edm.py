"""EDM preconditioning, loss, seeded noise, the Heun sampler and the U-Net (torch only)."""

import copy

import pytest
import torch

from piddm_fem.edm import (PAIR_STREAM, RESAMPLE_STREAM, SAMPLE_STREAM, VAL_STREAM, EDMLoss, EDMPrecond, RowNoise,
                           heun_sample, noise_for_indices, sigma_steps)
from piddm_fem.errors import PiddmError
from piddm_fem.unet import UNet, padding_for, preset

torch.set_num_threads(1)


class Recorder(torch.nn.Module):
    """Raw network F(x, c_noise) = 2 x + c_noise that records its inputs."""

    def forward(self, x, c_noise):
        self.x, self.c_noise = x, c_noise
        return 2 * x + c_noise.reshape(-1, 1, 1, 1)


class GaussianDenoiser:
    """The exact E[x0 | x] for data x0 ~ N(mu, s^2) (per element) and x = x0 + sigma n."""

    def __init__(self, mu, s):
        self.mu, self.s = mu, s
        self.calls = 0

    def __call__(self, x, sigma):
        self.calls += 1
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_preconditioning_identities(sigma_data):
    net = EDMPrecond(Recorder(), sigma_data)
    sigma = torch.logspace(-3, 2, 50, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = net.coefficients(sigma)
    sd2 = sigma_data**2
    # unit-variance network input, unit-variance training target, loss weight 1 / c_out^2
    torch.testing.assert_close(c_in**2 * (sigma**2 + sd2), torch.ones_like(sigma))
    torch.testing.assert_close((1 - c_skip) ** 2 * sd2 + c_skip**2 * sigma**2, c_out**2)
    weight = (sigma**2 + sd2) / (sigma * sigma_data) ** 2
    torch.testing.assert_close(weight * c_out**2, torch.ones_like(sigma))
    torch.testing.assert_close(c_noise, sigma.log() / 4)
    assert c_skip[0] > 0.999 and c_out[0] < 0.01  # D(x; sigma -> 0) -> x


def test_precond_forward_composes_skip_and_network():
    net = EDMPrecond(Recorder(), 0.5)
    x = torch.randn(3, 2, 5, 5)
    sigma = torch.tensor([0.1, 1.0, 30.0])
    out = net(x, sigma)
    c_skip, c_out, c_in, c_noise = net.coefficients(sigma.reshape(-1, 1, 1, 1))
    torch.testing.assert_close(net.model.x, c_in * x)
    torch.testing.assert_close(net.model.c_noise, sigma.log() / 4)
    torch.testing.assert_close(out, c_skip * x + c_out * (2 * c_in * x + c_noise))
    # a scalar sigma is broadcast over the batch
    torch.testing.assert_close(net(x, 1.0), net(x, torch.ones(3)))


def test_edm_loss_sigma_distribution_and_weight():
    """With the exact denoiser of N(0, sigma_d^2) data the weighted loss is 1 in expectation
    for every sigma, and the sampled log sigma is N(P_mean, P_std^2)."""
    sd = 0.5
    seen = []

    def denoiser(x, sigma):
        seen.append(sigma)
        return GaussianDenoiser(0.0, sd)(x, sigma)

    loss_fn = EDMLoss(sigma_data=sd)
    x = torch.randn(20000, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * sd
    loss = loss_fn(denoiser, x, generator=torch.Generator().manual_seed(1))
    assert loss.shape == x.shape
    assert abs(loss.mean().item() - 1.0) < 0.03
    log_sigma = seen[0].log()
    assert abs(log_sigma.mean().item() + 1.2) < 0.03
    assert abs(log_sigma.std().item() - 1.2) < 0.03


def test_sigma_steps_schedule():
    t = sigma_steps(18, 0.002, 80.0, 7.0)
    assert t.shape == (19,) and t[-1] == 0
    torch.testing.assert_close(t[[0, 17]], torch.tensor([80.0, 0.002], dtype=torch.float64))
    assert (t[:-1].diff() < 0).all()
    rho = 7.0  # EDM's Eq. 5: equal steps in sigma^(1/rho)
    i = torch.arange(18, dtype=torch.float64)
    torch.testing.assert_close(t[:-1], (80.0 ** (1 / rho) + i / 17 * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho)


@pytest.mark.parametrize("num_steps, tol", [(18, 0.05), (40, 0.01), (100, 0.002)])
def test_heun_maps_noise_to_gaussian(num_steps, tol):
    """Data N(mu, s^2): the probability-flow ODE is affine, eps -> ~mu + s * eps. Heun's relative
    error in the spread is ~4.5 % at N = 18 (unit s) and falls as 1/N^2."""
    mu = torch.tensor([2.0, -1.0]).reshape(1, 2, 1, 1)
    s = torch.tensor([1.0, 3.0]).reshape(1, 2, 1, 1)
    den = GaussianDenoiser(mu, s)
    eps = noise_for_indices(0, range(2000), (2, 4, 4))
    x0, nfe = heun_sample(den, eps, num_steps=num_steps)
    assert nfe == 2 * num_steps - 1 == den.calls
    assert x0.dtype == eps.dtype and x0.shape == eps.shape
    # sample by sample, against the exact flow from x = 80 eps at sigma_max = 80
    exact = mu + s / (s**2 + 80.0**2).sqrt() * (80.0 * eps - mu)
    assert (x0 - exact).abs().max() <= tol * (exact - mu).abs().max()
    # as a distribution (statistical error of 32000 draws per channel: ~0.5 % in std)
    mean, std = x0.mean(dim=(0, 2, 3)), x0.std(dim=(0, 2, 3))
    torch.testing.assert_close(mean, mu.flatten(), atol=0.03 * 3.0, rtol=0)
    torch.testing.assert_close(std, s.flatten(), rtol=tol + 0.01, atol=0)


def test_heun_single_step_is_one_evaluation():
    den = GaussianDenoiser(1.0, 1.0)
    x0, nfe = heun_sample(den, torch.zeros(2, 1, 3, 3), num_steps=1)
    assert nfe == 1 and torch.allclose(x0, torch.ones_like(x0), atol=1e-3)


def test_noise_depends_only_on_seed_and_index():
    shape = (2, 6, 6)
    batch = noise_for_indices(7, range(10), shape)
    for k in (0, 3, 9):
        torch.testing.assert_close(noise_for_indices(7, [k], shape)[0], batch[k], rtol=0, atol=0)
    torch.testing.assert_close(noise_for_indices(7, [9, 3], shape), batch[[9, 3]], rtol=0, atol=0)
    assert not torch.equal(noise_for_indices(8, [3], shape)[0], batch[3])
    assert not torch.equal(batch[0], batch[1])
    big = noise_for_indices(1, range(200), shape)
    assert abs(big.mean().item()) < 0.02 and abs(big.std().item() - 1) < 0.02
    assert noise_for_indices(7, [3], shape, dtype=torch.float64).dtype == torch.float64


def test_noise_streams_share_no_row():
    """Distillation pairs (and their validation) are drawn where sampling never draws, and so is
    the fresh noise that a sampler draws while it runs (its later draws included)."""
    shape = (2, 6, 6)
    streams = [noise_for_indices(7, range(50), shape, stream=s).flatten(1)
               for s in (SAMPLE_STREAM, PAIR_STREAM, VAL_STREAM, RESAMPLE_STREAM)]
    fresh = RowNoise(7, range(50), RESAMPLE_STREAM)
    fresh.draw(shape)
    streams.append(fresh.draw(shape).flatten(1))
    torch.testing.assert_close(streams[0], noise_for_indices(7, range(50), shape).flatten(1), rtol=0, atol=0)
    for i in range(len(streams)):
        for j in range(i + 1, len(streams)):
            assert torch.cdist(streams[i], streams[j]).min() > 1.0


def test_later_draws_of_a_row_do_not_depend_on_the_batch():
    shape = (2, 5, 5)
    batch, alone = RowNoise(3, range(6), RESAMPLE_STREAM), RowNoise(3, [4], RESAMPLE_STREAM)
    for _ in range(3):
        torch.testing.assert_close(alone.draw(shape)[0], batch.draw(shape)[4], rtol=0, atol=0)


def _randomised(net):
    """Give every parameter random values (the output convolution starts at zero)."""
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net.eval()


@pytest.mark.parametrize("S", [5, 17, 32, 33])
def test_unet_any_grid_size(S):
    net = _randomised(UNet(preset("tiny", 2)))
    x = torch.randn(2, 2, S, S)
    y = net(x, torch.tensor([0.1, -0.5]))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.allclose(y[0], net(x, torch.tensor([0.9, -0.5]))[0])  # noise conditioning


@pytest.mark.parametrize("channels", [1, 2])
def test_unet_runs_in_its_weights_layout_with_the_same_result(channels):
    """A channels_last network (the default layout) converts its input and agrees with the same
    weights in the contiguous layout; the output is a plain contiguous tensor either way."""
    torch.manual_seed(0)
    plain = _randomised(UNet(preset("tiny", channels)))
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    x, t = torch.randn(3, channels, 17, 17), torch.tensor([0.1, -0.5, 0.3])
    with torch.no_grad():
        y_plain, y_fast = plain(x, t), fast(x, t)
    assert y_fast.is_contiguous() and y_plain.is_contiguous()
    torch.testing.assert_close(y_fast, y_plain, atol=1e-5, rtol=1e-5)


def test_unet_circular_padding_is_translation_equivariant():
    """Shifts by a multiple of 2^(levels-1) commute with a circular network, not a zero-padded one."""
    torch.manual_seed(0)
    x, t = torch.randn(1, 2, 16, 16), torch.tensor([0.3])

    def shift(z):
        return torch.roll(z, shifts=(2, 4), dims=(-2, -1))

    circ = _randomised(UNet(preset("tiny", 2, padding="circular")))
    torch.testing.assert_close(circ(shift(x), t), shift(circ(x, t)), atol=1e-4, rtol=1e-4)
    zero = _randomised(UNet(preset("tiny", 2, padding="zeros")))
    assert (zero(shift(x), t) - shift(zero(x, t))).abs().max() > 1e-2


def test_padding_and_preset_choices():
    assert padding_for(["dirichlet", "dirichlet"]) == "zeros"
    assert padding_for(["periodic", "periodic"]) == "circular"
    assert padding_for(["dirichlet", "dirichlet"], "circular") == "circular"
    with pytest.raises(PiddmError, match="--padding"):
        padding_for(["periodic", "dirichlet"])
    with pytest.raises(PiddmError, match="tiny"):
        preset("huge", 2)

