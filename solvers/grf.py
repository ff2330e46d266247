"""Gaussian random fields on the S x S grid with covariance (-Laplacian + tau^2)^(-alpha).

The FNO / DiffusionPDE recipe: a periodic spectral sample whose Fourier coefficients are scaled by
the square root of the covariance's eigenvalues, with the mean mode removed. numpy only.
"""

import numpy as np

# alpha > 1: the field has finite variance in two dimensions; tau > 0: the covariance is defined.
GRF_RANGES = {"alpha": "(1, inf)", "tau": "(0, inf)"}


def gaussian_random_field(S: int, rng: np.random.Generator, alpha: float = 2.0, tau: float = 3.0):
    """One sample [S, S] (index [j, i] as on the grid)."""
    k = np.fft.fftfreq(S, d=1.0 / S)
    kx, ky = np.meshgrid(k, k, indexing="xy")
    sigma = tau ** (0.5 * (2 * alpha - 2))
    sqrt_eig = S * S * np.sqrt(2.0) * sigma * (4 * np.pi**2 * (kx**2 + ky**2) + tau**2) ** (-alpha / 2)
    sqrt_eig[0, 0] = 0.0
    xi = rng.standard_normal((S, S)) + 1j * rng.standard_normal((S, S))
    return np.fft.ifft2(sqrt_eig * xi).real
