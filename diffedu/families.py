"""Three other families in their smallest faithful form: a VAE, a GAN and an energy-based model.

* **VAE** (Kingma & Welling 2014): an encoder q(z | x) = N(mu(x), diag s(x)^2), a decoder
  p(x | z) = N(m(z), diag tau^2) and a standard normal prior; trained by maximising the ELBO (eq. 3)
      log p(x) >= E_q[log p(x | z)] - KL(q(z | x) || N(0, I)),
  with the reparametrisation z = mu + s * eps (eq. 10). DDPM's loss is the same bound with a fixed encoder of
  1000 noising steps (chapter 1). ``LinearVAE`` with ``ppca_fit`` is the case where the bound is tight: a linear
  decoder's optimum is probabilistic PCA (Tipping & Bishop 1999), whose log-likelihood is known in closed form.
* **GAN** (Goodfellow et al. 2014): a generator G(z) and a discriminator D(x) in a two-player game (eq. 1), with
  the non-saturating generator loss -log D(G(z)). No likelihood; known to drop modes ("mode collapse").
* **EBM**: p(x) proportional to exp(-E(x)), trained by maximum likelihood, whose gradient is
  E_data[grad E] - E_model[grad E] (contrastive divergence, Hinton 2002; Du & Mordatch 2019), the model's
  samples drawn by Langevin dynamics x <- x - (eps/2) grad E(x) + sqrt(eps) z, which needs only
  -grad E = grad log p: the *score* of chapter 2. The partition function never appears.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .checks import check_finite, check_int, check_scalar

Tensor = torch.Tensor


def mlp(d_in: int, hidden: int, d_out: int, depth: int = 2) -> nn.Sequential:
    """depth hidden layers of width ``hidden`` with SiLU (the networks of every family here)."""
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.SiLU()]
        d = hidden
    return nn.Sequential(*layers, nn.Linear(d, d_out))


def _flat(x: Tensor, dim: int) -> Tensor:
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] != dim:
        raise ValueError(f"x must hold {dim} values per example, got {x.shape[1]}")
    return x


# --- VAE ---------------------------------------------------------------------------------------------------

class VAE(nn.Module):
    """Gaussian encoder and decoder MLPs; the decoder's standard deviation tau is one learned number per
    coordinate (so the ELBO is a bound on a density, comparable in bits/dim)."""

    def __init__(self, data_dim: int = 2, latent_dim: int = 2, hidden: int = 64, depth: int = 2) -> None:
        super().__init__()
        for name, v in (("data_dim", data_dim), ("latent_dim", latent_dim), ("hidden", hidden)):
            check_int(name, v, 1)
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.config = {"name": type(self).__name__, "data_dim": data_dim, "latent_dim": latent_dim,
                       "hidden": hidden, "depth": depth}
        self.encoder = mlp(data_dim, hidden, 2 * latent_dim, depth)   # -> (mu, log s)
        self.decoder = mlp(latent_dim, hidden, data_dim, depth)       # -> m(z)
        self.log_tau = nn.Parameter(torch.full((data_dim,), math.log(0.5)))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_s = self.encoder(_flat(x, self.data_dim)).chunk(2, dim=1)
        return mu, log_s.clamp(-10, 5)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction m(mu(x)), shaped like x."""
        return self.decoder(self.encode(x)[0]).reshape(x.shape)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decoder means m(z) of n prior draws z ~ N(0, I) (the usual picture; adding the decoder's noise
        tau * eps would give the model's actual samples)."""
        p = self.log_tau
        z = torch.randn(check_int("n", n, 1), self.latent_dim, generator=generator, device=p.device)
        return self.decoder(z)


def gaussian_log_prob(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """sum_d log N(x_d; mean_d, std_d^2), (B,)."""
    return (-0.5 * ((x - mean) / log_std.exp()) ** 2 - log_std
            - 0.5 * math.log(2 * math.pi)).sum(1)


def elbo(vae: VAE, x: Tensor,
         generator: torch.Generator | None = None) -> Tensor:
    """E_q[log p(x|z)] - KL(q(z|x) || N(0, I)) per example, one z."""
    x = _flat(x, vae.data_dim)                              # (B, D)
    mu, log_s = vae.encode(x)                               # (B, K) each
    eps = torch.randn(mu.shape, generator=generator, device=mu.device)
    z = mu + log_s.exp() * eps                              # reparametrised
    rec = gaussian_log_prob(x, vae.decoder(z), vae.log_tau)  # (B,)
    kl = 0.5 * (mu ** 2 + (2 * log_s).exp() - 1 - 2 * log_s).sum(1)
    return rec - kl                                         # (B,), nats


def vae_loss(vae: VAE, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """-ELBO per dimension (the ``train`` loss)."""
    return -elbo(vae, x, generator).mean() / vae.data_dim


class LinearVAE(nn.Module):
    """q(z | x) = N(V x + c, diag s^2), p(x | z) = N(W z + b, sigma^2 I): the ELBO in closed form (no sampling)."""

    def __init__(self, data_dim: int, latent_dim: int) -> None:
        super().__init__()
        D, K = check_int("data_dim", data_dim, 1), check_int("latent_dim", latent_dim, 1)
        g = torch.Generator().manual_seed(0)
        self.W = nn.Parameter(0.1 * torch.randn(D, K, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros(D, dtype=torch.float64))
        self.log_sigma = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.V = nn.Parameter(0.1 * torch.randn(K, D, generator=g, dtype=torch.float64))
        self.c = nn.Parameter(torch.zeros(K, dtype=torch.float64))
        self.log_s = nn.Parameter(torch.zeros(K, dtype=torch.float64))

    def elbo(self, x: Tensor) -> Tensor:
        """Exact E_q[log p(x | z)] - KL per example (B,): E||x - W z - b||^2 = ||x - W mu - b||^2 + tr(W S W^T)."""
        D = x.shape[1]
        mu = x @ self.V.T + self.c                                     # (B, K)
        s2, sigma2 = (2 * self.log_s).exp(), (2 * self.log_sigma).exp()
        err = ((x - mu @ self.W.T - self.b) ** 2).sum(1) + (self.W ** 2 * s2).sum()
        rec = -0.5 * D * torch.log(2 * math.pi * sigma2) - 0.5 * err / sigma2
        kl = 0.5 * (mu ** 2 + s2 - 1 - 2 * self.log_s).sum(1)
        return rec - kl


def ppca_fit(x: Tensor, latent_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Maximum-likelihood probabilistic PCA (Tipping & Bishop 1999, eq. 7-8): mean b, W = U_K (L_K - sigma^2)^1/2,
    sigma^2 = mean of the discarded eigenvalues of the (1/N) sample covariance. Returns (W, b, sigma^2)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    check_finite("x", x)
    D = x.shape[1]
    K = check_int("latent_dim", latent_dim, 1, D - 1)
    b = x.mean(0)
    S = (x - b).T @ (x - b) / x.shape[0]
    lam, U = torch.linalg.eigh(S)                                      # ascending
    lam, U = lam.flip(0), U.flip(1)
    sigma2 = lam[K:].mean()
    return U[:, :K] * (lam[:K] - sigma2).clamp(min=0).sqrt(), b, sigma2


def ppca_log_likelihood(x: Tensor, W: Tensor, b: Tensor, sigma2: Tensor) -> Tensor:
    """log N(x; b, W W^T + sigma^2 I) per example (B,): the marginal likelihood of the linear-Gaussian model."""
    C = W @ W.T + sigma2 * torch.eye(W.shape[0], dtype=W.dtype)
    return torch.distributions.MultivariateNormal(b, covariance_matrix=C).log_prob(x)


# --- GAN ---------------------------------------------------------------------------------------------------

class GAN(nn.Module):
    """A generator G: z (latent_dim) -> x (data_dim) and a discriminator D: x -> logit, both MLPs."""

    def __init__(self, data_dim: int = 2, latent_dim: int = 2, hidden: int = 64, depth: int = 2) -> None:
        super().__init__()
        self.data_dim, self.latent_dim = check_int("data_dim", data_dim, 1), check_int("latent_dim", latent_dim, 1)
        self.config = {"name": type(self).__name__, "data_dim": data_dim, "latent_dim": latent_dim,
                       "hidden": hidden, "depth": depth}
        self.generator = mlp(latent_dim, hidden, data_dim, depth)
        self.discriminator = mlp(data_dim, hidden, 1, depth)

    def forward(self, x: Tensor) -> Tensor:
        """The discriminator's logit D(x), (B,)."""
        return self.discriminator(_flat(x, self.data_dim))[:, 0]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        p = next(self.parameters())
        z = torch.randn(check_int("n", n, 1), self.latent_dim, generator=generator, device=p.device)
        return self.generator(z)


def gan_losses(gan: GAN, x: Tensor, generator: torch.Generator | None = None
               ) -> tuple[Tensor, Tensor]:
    """(discriminator loss, non-saturating generator loss), eq. 1."""
    z = torch.randn(x.shape[0], gan.latent_dim, generator=generator,
                    device=x.device)
    fake = gan.generator(z)                                 # (B, D)
    real_logit = gan(x)                                     # (B,)
    fake_logit = gan(fake.detach())
    d_loss = (F.softplus(-real_logit)                       # -log D(x)
              + F.softplus(fake_logit)).mean()              # -log(1-D(G(z)))
    g_loss = F.softplus(-gan(fake)).mean()                  # -log D(G(z))
    return d_loss, g_loss


def train_gan(gan: GAN, data: Tensor, steps: int, batch_size: int = 128, lr: float = 2e-4, seed: int = 0,
              betas: tuple[float, float] = (0.5, 0.999)) -> list[tuple[float, float]]:
    """One discriminator and one generator Adam step per batch (Goodfellow et al. Alg. 1 with k = 1); returns
    the (d_loss, g_loss) of every step. The GAN is left in eval mode on data's device."""
    steps, batch_size = check_int("steps", steps, 1), check_int("batch_size", batch_size, 1)
    check_scalar("lr", lr, 0.0, math.inf, low_inclusive=False)
    data = data.reshape(data.shape[0], -1)
    check_finite("data", data)
    g = torch.Generator(data.device).manual_seed(seed)
    rows = torch.Generator().manual_seed(seed + 1)
    opt_d = torch.optim.Adam(gan.discriminator.parameters(), lr=lr, betas=betas)
    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=lr, betas=betas)
    history = []
    gan.train()
    for _ in range(steps):
        x = data[torch.randint(data.shape[0], (batch_size,), generator=rows).to(data.device)]
        d_loss, g_loss = gan_losses(gan, x, g)
        opt_d.zero_grad(set_to_none=True)
        opt_g.zero_grad(set_to_none=True)
        d_loss.backward(inputs=list(gan.discriminator.parameters()))
        g_loss.backward(inputs=list(gan.generator.parameters()))
        opt_d.step()  # both players step on the same batch (simultaneous gradient play)
        opt_g.step()
        history.append((d_loss.item(), g_loss.item()))
    gan.eval()
    return history


def generator_best_response(gan: GAN, steps: int, batch_size: int = 256, lr: float = 1e-3,
                            seed: int = 0) -> GAN:
    """Train the generator alone against the *frozen* discriminator for ``steps`` Adam steps (in place).

    The mechanism of mode collapse (Goodfellow 2016, Sec. 5.1.1): for a fixed D, the generator's best response
    puts all its mass where D is most convinced, whatever z is; alternating steps only postpone it."""
    steps = check_int("steps", steps, 1)
    p = next(gan.parameters())
    g = torch.Generator(p.device).manual_seed(seed)
    opt = torch.optim.Adam(gan.generator.parameters(), lr=lr, betas=(0.5, 0.999))
    for _ in range(steps):
        z = torch.randn(batch_size, gan.latent_dim, generator=g, device=p.device)
        loss = F.softplus(-gan(gan.generator(z))).mean()      # -log D(G(z)), D fixed
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=list(gan.generator.parameters()))
        opt.step()
    return gan.eval()


# --- EBM ---------------------------------------------------------------------------------------------------

class EnergyMLP(nn.Module):
    """E(x): an MLP to one number; p(x) = exp(-E(x)) / Z."""

    def __init__(self, data_dim: int = 2, hidden: int = 64, depth: int = 2) -> None:
        super().__init__()
        self.data_dim = check_int("data_dim", data_dim, 1)
        self.config = {"name": type(self).__name__, "data_dim": data_dim, "hidden": hidden, "depth": depth}
        self.net = mlp(data_dim, hidden, 1, depth)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(_flat(x, self.data_dim))[:, 0]          # (B,)

    def score(self, x: Tensor) -> Tensor:
        """-grad_x E(x) = grad_x log p(x): the score, without Z."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self(x).sum(), x)
        return -grad


def langevin_sample(energy: EnergyMLP, x: Tensor, steps: int,
                    step_size: float,
                    generator: torch.Generator | None = None) -> Tensor:
    """x <- x + (eps/2) score(x) + sqrt(eps) z, ``steps`` times."""
    for _ in range(check_int("steps", steps, 0)):
        z = torch.randn(x.shape, generator=generator, device=x.device)
        x = x + 0.5 * step_size * energy.score(x) + step_size ** 0.5 * z
    return x.detach()


def ebm_loss(energy: EnergyMLP, x_data: Tensor, x_model: Tensor,
             alpha: float = 0.1) -> Tensor:
    """E(data) - E(samples): its gradient is the likelihood's (CD);
    alpha (E^2 terms) keeps the energies near 0 (Du & Mordatch)."""
    e_data, e_model = energy(x_data), energy(x_model.detach())
    reg = alpha * (e_data ** 2 + e_model ** 2).mean()
    return e_data.mean() - e_model.mean() + reg


def train_ebm(energy: EnergyMLP, data: Tensor, steps: int, batch_size: int = 128, lr: float = 1e-3,
              langevin_steps: int = 20, step_size: float = 0.01, reinit: float = 0.05, box: float = 3.0,
              seed: int = 0) -> list[float]:
    """Maximum likelihood with persistent Langevin chains (a replay buffer, Du & Mordatch 2019, Sec. 3.1):
    each step continues ``batch_size`` chains from the buffer (a share ``reinit`` restarted uniformly in
    [-box, box]^D), runs ``langevin_steps`` steps and takes one Adam step on ``ebm_loss``. Returns the losses."""
    steps, batch_size = check_int("steps", steps, 1), check_int("batch_size", batch_size, 1)
    check_scalar("reinit", reinit, 0.0, 1.0)
    data = data.reshape(data.shape[0], -1)
    check_finite("data", data)
    g = torch.Generator(data.device).manual_seed(seed)
    rows = torch.Generator().manual_seed(seed + 1)
    uniform = lambda n: box * (2 * torch.rand(n, data.shape[1], generator=g, device=data.device) - 1)
    buffer = uniform(10 * batch_size)
    opt = torch.optim.Adam(energy.parameters(), lr=lr, betas=(0.0, 0.999))
    losses = []
    energy.train()
    for _ in range(steps):
        pick = torch.randint(buffer.shape[0], (batch_size,), generator=rows).to(data.device)
        start = buffer[pick]
        fresh = torch.rand(batch_size, generator=g, device=data.device) < reinit
        start = torch.where(fresh[:, None], uniform(batch_size), start)
        x_model = langevin_sample(energy, start, langevin_steps, step_size, g)
        buffer[pick] = x_model
        x = data[torch.randint(data.shape[0], (batch_size,), generator=rows).to(data.device)]
        loss = ebm_loss(energy, x, x_model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    energy.eval()
    return losses
