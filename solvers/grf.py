"""Gaussian random fields on the S x S grid with covariance tau^(2 alpha - 2) (-Laplacian + tau^2)^(-alpha).

The FNO / DiffusionPDE recipe (their GRF.m): the Karhunen-Loeve series of that covariance with
Neumann boundary conditions on the unit square, truncated to the S x S lowest cosine modes, with the
mean mode removed. The series is evaluated at the grid's nodes. numpy only.
"""

import numpy as np

# alpha > 1: the field has finite variance in two dimensions; tau > 0: the covariance is defined.
GRF_RANGES = {"alpha": "(1, inf)", "tau": "(0, inf)"}


def gaussian_random_field(S: int, rng: np.random.Generator, alpha: float = 2.0, tau: float = 3.0):
    """One sample [S, S] (index [j, i] as on the grid, x_i = i / (S - 1)):

        U(x, y) = sum_{k, l < S} sqrt(lambda_kl) xi_kl phi_k(x) phi_l(y),   xi_kl ~ N(0, 1),
        lambda_kl = tau^(2 alpha - 2) (pi^2 (k^2 + l^2) + tau^2)^(-alpha),   lambda_00 = 0,
        phi_k(x) = sqrt(2 - [k = 0]) cos(k pi x)   (orthonormal on [0, 1]).
    """
    k = np.arange(S)
    phi = np.sqrt(np.where(k == 0, 1.0, 2.0)) * np.cos(np.pi * np.outer(np.linspace(0.0, 1.0, S), k))
    kx, ky = np.meshgrid(k, k, indexing="xy")
    sqrt_eig = tau ** (alpha - 1) * (np.pi**2 * (kx**2 + ky**2) + tau**2) ** (-alpha / 2)
    sqrt_eig[0, 0] = 0.0
    return phi @ (sqrt_eig * rng.standard_normal((S, S))) @ phi.T
