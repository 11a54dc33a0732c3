"""Latent diffusion (Rombach et al., 2022): train an autoencoder once, then run diffusion on its latents.

The recipe has three parts, each a few lines here:

1. An autoencoder E, D trained on images with a reconstruction loss and a light KL term
   (:func:`autoencoder_loss`; the network is :class:`diffedu.nets.autoencoder.Autoencoder`).
2. The latents are scaled to unit variance, z = s E(x) with s = 1 / std(E(x)) (:func:`latent_scale_factor`;
   Stable Diffusion's 0.18215), because every noise schedule of the book assumes data of variance about 1: its
   final x_T ~ N(0, I) only erases data of that size.
3. Any denoiser and any sampler of the book run unchanged on z; the sample is decoded once, at the end:
   x = D(z_0 / s) (:func:`decode`).

The linear special case is exact (:class:`PCAAutoencoder`): projecting Gaussian-mixture data onto its top-k
principal directions gives a Gaussian mixture in latent space (:meth:`PCAAutoencoder.project`), so the
ExactModel can do latent diffusion with no training, and the reconstruction error is the sum of the discarded
eigenvalues of the data covariance (Pearson, 1901; Bishop, 2006, Sec. 12.1.2).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import check_finite, check_int, check_scalar
from .nets.autoencoder import Autoencoder
from .toy import GaussianMixture


def autoencoder_loss(ae: Autoencoder, x: Tensor, beta: float,
                     generator: torch.Generator | None = None) -> Tensor:
    """E_x[ ||x - D(z)||^2 + beta KL(q(z | x) || N(0, I)) ], z ~ q(z | x), sums over each image's pixels and
    latent numbers, mean over the batch (Rombach et al., 2022, Sec. 3.1, with a squared error for their L1 +
    perceptual loss). With beta = 2 sigma_x^2 this is the negative ELBO of a Gaussian decoder of variance
    sigma_x^2, up to constants (Kingma & Welling, 2014); a small beta keeps the latent informative."""
    check_scalar("beta", beta, 0.0)
    ae.check_images(x)
    x_hat, posterior = ae(x, generator)          # (B, C, H, W), q(z | x)
    reconstruction = (x - x_hat).pow(2).flatten(1).sum(dim=1)      # (B,)
    return (reconstruction + beta * posterior.kl()).mean()


@torch.no_grad()
def encode(ae: Autoencoder, x: Tensor, scale_factor: float | None = None, batch_size: int = 500) -> Tensor:
    """z = s * mean of q(z | x): the diffusion model's data (B, c, H / f, W / f). ``scale_factor`` s defaults
    to the one stored in ``ae`` (``ae.scale_factor``, set by the recipe that trained it)."""
    ae.check_images(x)
    s = ae.scale_factor if scale_factor is None else check_scalar("scale_factor", scale_factor, 0.0,
                                                                  low_inclusive=False)
    chunks = [ae.encode(x[i:i + batch_size]).mean for i in range(0, len(x), batch_size)]
    return s * torch.cat(chunks)                                   # (B, c, h, w)


@torch.no_grad()
def decode(ae: Autoencoder, z: Tensor, scale_factor: float | None = None, batch_size: int = 500) -> Tensor:
    """x = D(z / s): images (B, C, H, W) from diffusion-space latents (B, c, H / f, W / f)."""
    ae.check_latents(z)
    s = ae.scale_factor if scale_factor is None else check_scalar("scale_factor", scale_factor, 0.0,
                                                                  low_inclusive=False)
    chunks = [ae.decode(z[i:i + batch_size] / s) for i in range(0, len(z), batch_size)]
    return torch.cat(chunks)                                       # (B, C, H, W)


def latent_scale_factor(latents: Tensor) -> float:
    """s = 1 / std(latents), over every number of the batch (Rombach et al., 2022, Sec. G: "we rescale the
    latents by the component-wise standard deviation" estimated on a batch)."""
    check_finite("latents", latents)
    if latents.numel() < 2:
        raise ValueError(f"latents must hold at least 2 numbers to estimate a standard deviation, got "
                         f"{latents.numel()}")
    std = float(latents.double().std())
    if std == 0.0:
        raise ValueError("latents must not be constant (their standard deviation is 0)")
    return 1.0 / std


class PCAAutoencoder:
    """The linear autoencoder that PCA is: z = U_k^T (x - m), x_hat = U_k z + m, with U_k the top-k
    eigenvectors of the data covariance (D, D); float64.

    ``eigenvalues`` (D,) are sorted from largest to smallest; E||x - x_hat||^2 = sum of eigenvalues[k:].
    """

    def __init__(self, mean: Tensor, covariance: Tensor, k: int) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float64)
        covariance = torch.as_tensor(covariance, dtype=torch.float64)
        D = mean.shape[-1]
        if mean.shape != (D,) or covariance.shape != (D, D):
            raise ValueError(f"mean must be (D,) and covariance (D, D), got {tuple(mean.shape)} and "
                             f"{tuple(covariance.shape)}")
        check_int("k", k, 1, D)
        lam, U = torch.linalg.eigh(covariance)                     # ascending
        self.eigenvalues, U = lam.flip(0), U.flip(1)               # (D,), (D, D), largest first
        self.mean, self.U_k, self.k = mean, U[:, :k], k            # (D,), (D, k)

    @classmethod
    def fit(cls, x: Tensor, k: int) -> "PCAAutoencoder":
        """PCA of the rows of x (N, D): their mean and (biased) covariance."""
        x = torch.as_tensor(x, dtype=torch.float64)
        check_finite("x", x)
        centred = x - x.mean(dim=0)
        return cls(x.mean(dim=0), centred.T @ centred / len(x), k)

    def encode(self, x: Tensor) -> Tensor:
        """z = U_k^T (x - m): (N, D) -> (N, k)."""
        return (torch.as_tensor(x, dtype=torch.float64) - self.mean) @ self.U_k

    def decode(self, z: Tensor) -> Tensor:
        """x_hat = U_k z + m: (N, k) -> (N, D)."""
        z = torch.as_tensor(z, dtype=torch.float64)
        if z.dim() != 2 or z.shape[1] != self.k:
            raise ValueError(f"z must be latents of shape (N, {self.k}), got {tuple(z.shape)}")
        return z @ self.U_k.T + self.mean

    def reconstruction_error(self) -> float:
        """E||x - x_hat||^2 = sum of the discarded eigenvalues lambda_{k+1} + ... + lambda_D."""
        return float(self.eigenvalues[self.k:].sum())

    def project(self, mixture: GaussianMixture) -> GaussianMixture:
        """The exact law of z = U_k^T (x - m) for x ~ sum_j w_j N(mu_j, Sigma_j): a linear map of a Gaussian is
        Gaussian, so z ~ sum_j w_j N(U_k^T (mu_j - m), U_k^T Sigma_j U_k)."""
        means = (mixture.means - self.mean) @ self.U_k       # (K, k)
        covs = self.U_k.T @ mixture.covs @ self.U_k           # (K, k, k)
        covs = 0.5 * (covs + covs.transpose(1, 2))            # symmetric
        return GaussianMixture(means, covs, mixture.weights)
