"""The recorded sweeps of chapters 7 and 8: every run is a recipe run (``diffedu.recipes``) with a few fields
changed, trained on one CPU thread, evaluated, and written (metrics, wall time, Gflops, the command that reruns
it) to data/records/latent_sweeps.json. The chapters plot the record and rerun one point live.

    python scripts/latent_sweeps.py autoencoder    # rate-distortion: factor f x latent channels c
    python scripts/latent_sweeps.py dit            # DiT quality against Gflops: width x patch size
    python scripts/latent_sweeps.py conditioning   # adaLN-Zero vs adaLN vs in-context vs cross-attention
    python scripts/latent_sweeps.py kl             # the KL weight beta sets the latents' scale (f = 4, c = 4)
    python scripts/latent_sweeps.py all            # all four (about 45 min on one thread)

A group's rows replace that group's rows in the record; the other groups are kept.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from diffedu.pretrained import data_dir, load_pretrained
from diffedu.recipes import RECIPES, recipe_command, run_recipe
from diffedu.utils import forward_gflops

RECORD = "records/latent_sweeps.json"
SWEEP_STEPS = {"autoencoder": 500, "dit": 800, "conditioning": 800, "kl": 500}
LIVE_LOSSES = 100  # the first losses of every DiT run, kept so that a chapter can reproduce them live
MULTS = {2: (1, 2), 4: (1, 2, 2), 8: (1, 2, 2, 2)}

GROUPS = {
    "autoencoder": [("autoencoder_mnist", dict(channel_mults=MULTS[f], latent_channels=c))
                    for f, c in [(2, 1), (4, 1), (4, 2), (4, 4), (8, 4), (8, 8)]],
    "dit": [("dit_mnist", dict(patch_size=p, hidden_size=d)) for d in (64, 96) for p in (4, 2, 1)
            if (p, d) != (1, 96)],
    # adaLN-Zero at width 64, patch 2 is the "dit" group's run of that size: it is copied, not rerun
    "conditioning": [("dit_mnist", dict(conditioning=c, patch_size=2, hidden_size=64))
                     for c in ("adaLN", "in-context", "cross-attention")],
    # beta = 1e-3 at f = 4, c = 4 is the "autoencoder" group's run of that size: copied, not rerun
    "kl": [("autoencoder_mnist", dict(beta=beta)) for beta in (1e-1, 1e-5, 0.0)],
}
SHARED = {"conditioning": ("dit", dict(patch_size=2, hidden_size=64), dict(conditioning="adaLN-Zero")),
          "kl": ("autoencoder", dict(channel_mults=[1, 2, 2], latent_channels=4), dict(beta=1e-3))}
RECONSTRUCTED = 8  # held-out digits whose reconstructions every autoencoder row keeps (as 8-bit pixels)


def gflops_of(name: str, net: torch.nn.Module, cfg) -> float:
    """Forward Gflops of one example (the autoencoder: encoder + decoder)."""
    if name == "autoencoder_mnist":
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net.decode(net.encode(torch.zeros(1, 1, 32, 32)).mean)
        return counter.get_total_flops() / 1e9
    shape = load_pretrained(cfg.autoencoder).latent_shape
    return forward_gflops(net, torch.zeros(1, *shape), 0.5, torch.zeros(1, dtype=torch.long))


def run_group(group: str, eval_per_class: int) -> list[dict]:
    rows = []
    for name, overrides in GROUPS[group]:
        recipe = RECIPES[name]
        fields = dict(overrides, steps=SWEEP_STEPS[group])
        if name != "autoencoder_mnist":
            fields.update(eval_per_class=eval_per_class, eval_steps=25)
        cfg = replace(recipe.config(), **fields)
        with tempfile.TemporaryDirectory() as out:
            entry = run_recipe(recipe, cfg, out=out, losses=f"{out}/losses.json")
            losses = json.loads(Path(f"{out}/losses.json").read_text())["losses"]
            net = load_pretrained(name, directory=out)
        row = dict(recipe=name, overrides={k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()},
                   command=recipe_command(recipe, cfg), steps=entry["steps"],
                   wall_time_s=entry["wall_time_s"], params=sum(p.numel() for p in net.parameters()),
                   gflops=gflops_of(name, net, cfg), eval=entry["train_config"]["eval"],
                   final_loss=entry["train_config"]["final_loss_mean_last_500"],
                   loss_every_50=[sum(losses[i:i + 50]) / len(losses[i:i + 50]) for i in range(0, len(losses), 50)])
        if name == "autoencoder_mnist":
            from diffedu.data import load_mnist5k
            from diffedu.latent import decode, encode

            x = load_mnist5k(32, split="test").x[:RECONSTRUCTED]
            x_hat = decode(net, encode(net, x)).clamp(-1, 1)
            row["reconstructions"] = torch.round((x_hat + 1) * 127.5).to(torch.uint8).flatten(1).tolist()
        else:
            row["first_losses"] = losses[:LIVE_LOSSES]
        print(json.dumps({k: v for k, v in row.items() if k not in ("reconstructions", "first_losses")}))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("group", choices=sorted(GROUPS) + ["all"])
    parser.add_argument("--eval-per-class", type=int, default=20, help="samples per digit in each evaluation")
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = data_dir() / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(path.read_text()) if path.exists() else {}
    for group in (["autoencoder", "kl", "dit", "conditioning"] if args.group == "all" else [args.group]):
        rows = run_group(group, args.eval_per_class)
        if group in SHARED:  # the run this group shares with another one, from that group's rows
            source, match, extra = SHARED[group]
            if source not in record:
                raise SystemExit(f"run the {source!r} group before {group!r}: it shares a run with it")
            shared = next(r for r in record[source] if all(r["overrides"][k] == v for k, v in match.items()))
            rows.insert(0, dict(shared, overrides={**shared["overrides"], **extra}))
        record[group] = rows
        path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
