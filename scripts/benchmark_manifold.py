"""Chapter 9's measures, as tables: what the geodesic random walk's steps cost and buy, in training and sampling.

    .venv/bin/python scripts/benchmark_manifold.py          # about 3 minutes on one CPU thread

1. Training: Riemannian score matching with the forward walk simulated in 1, 4 or 16 steps (the target is the
   exact heat-kernel score in every case), and with 500 or 2,000 training steps; flow matching beside it.
   Held-out NLL by the probability-flow ODE against the exact NLL, and the training time.
2. Sampling: the reverse geodesic random walk with K steps, for the learned score and the exact one:
   cross-entropy -E_q log p of the samples (the entropy when q = p).
"""

from __future__ import annotations

import time

import torch

from diffedu.grids import time_grid
from diffedu.manifold_toy import ExactManifoldModel, sphere_mixture
from diffedu.manifolds import Sphere
from diffedu.nets import TangentMLP
from diffedu.riemannian import geodesic_random_walk_sample, log_likelihood, log_time_grid, rfm_loss, rsgm_loss
from diffedu.train import train

T, T_MIN = 4.0, 1e-3


def main() -> None:
    torch.set_num_threads(1)
    sphere, data = Sphere(), sphere_mixture()
    x_train = data.sample(20_000, torch.Generator().manual_seed(0))[0].float()
    x_test = data.sample(500, torch.Generator().manual_seed(1))[0].float()
    exact_nll = -data.log_prob(x_test).mean().item()
    print(f"sphere data: {data};  exact held-out NLL {exact_nll:.3f} nats (500 points)\n")

    print("1. training (TangentMLP 64 x 2, batch 512, lr 3e-3, one CPU thread)")
    print(f"{'model':<34} {'steps':>6} {'NLL':>7} {'- exact':>8} {'train s':>8}")
    rsgm_models = {}
    runs = [("RSGM, walk 1 step", 500, dict(walk_steps=1)), ("RSGM, walk 4 steps", 500, dict(walk_steps=4)),
            ("RSGM, walk 16 steps", 500, dict(walk_steps=16)), ("RSGM, walk 16 steps", 2000, dict(walk_steps=16)),
            ("RFM (geodesic flow matching)", 500, None), ("RFM (geodesic flow matching)", 2000, None)]
    for name, steps, options in runs:
        torch.manual_seed(0)
        if options is None:
            net = TangentMLP("sphere", hidden=64, depth=2, prediction="velocity", t_min=0.0, t_max=1.0)
            loss = lambda m, x, g: rfm_loss(m, x, sphere, generator=g)  # noqa: E731
            grid = time_grid(40, 0.0, 1.0).flip(0)
        else:
            net = TangentMLP("sphere", hidden=64, depth=2, t_min=T_MIN, t_max=T)
            loss = lambda m, x, g, o=options: rsgm_loss(m, x, sphere, T_MIN, T, generator=g, **o)  # noqa: E731
            grid = log_time_grid(40, T_MIN, T).flip(0)
        start = time.perf_counter()
        run = train(net, loss, x_train, steps=steps, batch_size=512, lr=3e-3, warmup_steps=100, device="cpu",
                    progress=False)
        seconds = time.perf_counter() - start
        nll = -log_likelihood(run.ema_model, x_test, sphere, grid).mean().item()
        print(f"{name:<34} {steps:>6} {nll:>7.3f} {nll - exact_nll:>8.3f} {seconds:>8.1f}", flush=True)
        if options is not None and options["walk_steps"] == 16:
            rsgm_models[steps] = run.ema_model

    print("\n2. sampling: reverse geodesic random walk, cross-entropy -E log p(x) of 1,000 samples (500 for the exact "
          f"score); entropy {data.entropy():.3f}")
    models = {"learned, 500 steps": rsgm_models[500], "learned, 2000 steps": rsgm_models[2000],
              "exact score": ExactManifoldModel(data)}
    print(f"{'K':>5} " + " ".join(f"{name:>20}" for name in models))
    x_T = sphere.random_uniform(1000, torch.Generator().manual_seed(10))
    for K in (10, 30, 100, 300, 1000):
        cells = []
        for name, model in models.items():
            start = x_T[:500].double() if name == "exact score" else x_T
            x = geodesic_random_walk_sample(model, start, sphere, log_time_grid(K, T_MIN, T), progress=False,
                                            generator=torch.Generator().manual_seed(11))
            cells.append(f"{-data.log_prob(x).mean().item():>20.3f}")
        print(f"{K:>5} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
