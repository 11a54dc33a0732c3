"""Speed and quality of the book on this machine, printed as one table (not a test: numbers, not pass/fail).

    python scripts/benchmark.py                 # everything
    python scripts/benchmark.py --skip-chapters # only the training throughput
    python scripts/benchmark.py --samplers [--quick]   # add the chapter 5 sampler benchmark (issue 4)
    python scripts/benchmark.py --overhead      # only the per-step sampler overhead against diffusers
    python scripts/benchmark.py --fast-paths    # only training speed vs diffusers, fused attention, 2 processes
    python scripts/benchmark.py --distilled     # only chapter 6: the distilled students vs the teacher at 1-8 NFE
    python scripts/benchmark.py --latent        # only chapters 7-8: cost of pixel UNet, latent UNet and DiT
    python scripts/benchmark.py --scoreboard    # only chapter 14: every digits model of the book on one table,
                                                # recorded in data/scoreboard.json (--no-record: print only)

Rows: each chapter's execution time in quick mode (executed with nbclient, outputs discarded) and the sample-quality
figure it reports; training steps/s of the MLP (2-D) and the UNet (8x8 digits) at batch 128.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffedu.ddpm import ddpm_loss  # noqa: E402
from diffedu.nets import MLPDenoiser, UNet  # noqa: E402
from diffedu.pretrained import read_manifest  # noqa: E402
from diffedu.schedules import linear_schedule  # noqa: E402

# What each chapter prints as its quality figure: a regex over its text outputs.
QUALITY = {"01_ddpm": r"energy distance to data:.*?learned (\d+\.\d+)"}


def steps_per_second(model: torch.nn.Module, x: torch.Tensor, steps: int = 30) -> float:
    """Forward + backward + Adam steps per second of the DDPM loss at the batch ``x``."""
    schedule = linear_schedule()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    for k in range(steps + 5):
        if k == 5:
            start = time.perf_counter()
        optimizer.zero_grad()
        ddpm_loss(model, x, schedule, generator=g).backward()
        optimizer.step()
    return steps / (time.perf_counter() - start)


def diffusers_peer_unet(size: int) -> torch.nn.Module | None:
    """diffusers' UNet2DModel with the very architecture of our ``UNet()`` (0.701 M parameters: 32 and 64 channels,
    one residual block per level, attention at the lowest level and in the middle, 4 heads of 16, GroupNorm 8);
    None if diffusers is not installed. It runs its attention through torch's fused kernel (AttnProcessor2_0)."""
    try:
        from diffusers import UNet2DModel
    except Exception:  # optional, a test-only dependency
        return None

    class Peer(torch.nn.Module):
        prediction = "eps"

        def __init__(self) -> None:
            super().__init__()
            self.net = UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=(32, 64),
                                   layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                   up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                   attention_head_dim=16)

        def forward(self, x, t, cond=None):
            return self.net(x, t * 1000).sample

    return Peer()


def training_speed_vs_diffusers(sizes: tuple[int, ...] = (8, 16, 28), batch: int = 128, threads: int = 2,
                                rounds: int = 5, steps: int = 5) -> list[tuple[str, str, str, str]]:
    """Training steps/s (DDPM eps loss + Adam, batch ``batch``, ``threads`` torch threads) of our ``UNet()`` with
    the explicit and the fused attention, and of diffusers' ``UNet2DModel`` of the same architecture; ratios
    ours/diffusers. Timed interleaved, best of ``rounds`` rounds of ``steps`` steps each (after 5 warm-up steps), so
    drifting machine load hits all three alike and a loaded moment does not count."""
    from diffedu.nets.unet import set_fused_attention

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for size in sizes:
            torch.manual_seed(0)
            x = torch.randn(batch, 1, size, size)
            nets = {"explicit": UNet(), "fused": set_fused_attention(UNet(), True)}
            peer = diffusers_peer_unet(size)
            if peer is not None:
                nets["diffusers"] = peer
            best = {name: 0.0 for name in nets}
            for _ in range(rounds):
                for name, net in nets.items():
                    best[name] = max(best[name], steps_per_second(net, x, steps=steps))
            note = (f"diffusers {best['diffusers']:.2f} steps/s; ratio explicit "
                    f"{best['explicit'] / best['diffusers']:.2f}, fused {best['fused'] / best['diffusers']:.2f} "
                    f"(need >= 1.0)" if peer is not None else "diffusers missing")
            rows.append((f"UNet train {size}x{size}, batch {batch}, {threads} threads",
                         f"{best['explicit']:.2f} / {best['fused']:.2f} steps/s (explicit / fused)", note, ""))
    finally:
        torch.set_num_threads(before)
    return rows


def text_unet_attention_speedup(batch: int = 64, threads: int = 2, rounds: int = 3,
                                steps: int = 5) -> list[tuple[str, str, str, str]]:
    """Training steps/s and evaluations/s of the text-to-image UNet (the text_shapes recipe's net, 16x16 RGB,
    cross-attention at every level) with the explicit and the fused attention, batch ``batch``."""
    from diffedu.nets.unet import set_fused_attention
    from diffedu.recipes import TextShapesConfig, text_shapes_unet

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        cfg = TextShapesConfig()
        nets = {"explicit": text_shapes_unet(cfg), "fused": set_fused_attention(text_shapes_unet(cfg), True)}
        x, t = torch.randn(batch, 3, 16, 16), torch.rand(batch)
        ids = nets["explicit"].tokenize(["a large red circle at the top left"] * batch)
        schedule = linear_schedule()
        train_best, eval_best = {k: 0.0 for k in nets}, {k: 0.0 for k in nets}
        for _ in range(rounds):
            for name, net in nets.items():
                optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
                g = torch.Generator().manual_seed(0)
                start = time.perf_counter()
                for _ in range(steps):
                    optimizer.zero_grad()
                    ddpm_loss(net, x, schedule, cond=ids, generator=g).backward()
                    optimizer.step()
                train_best[name] = max(train_best[name], steps / (time.perf_counter() - start))
                with torch.no_grad():
                    start = time.perf_counter()
                    for _ in range(steps):
                        net(x, t, ids)
                eval_best[name] = max(eval_best[name], steps / (time.perf_counter() - start))
    finally:
        torch.set_num_threads(before)
    return [(f"text-to-image UNet train, batch {batch}, {threads} threads",
             f"{train_best['explicit']:.2f} / {train_best['fused']:.2f} steps/s (explicit / fused)",
             f"fused speed-up {train_best['fused'] / train_best['explicit']:.2f}x", ""),
            (f"text-to-image UNet forward, batch {batch}, {threads} threads",
             f"{eval_best['explicit']:.1f} / {eval_best['fused']:.1f} evals/s (explicit / fused)",
             f"fused speed-up {eval_best['fused'] / eval_best['explicit']:.2f}x", "")]


DDP_STEPS = 60


def ddp_worker(out: str, steps: int = DDP_STEPS) -> None:
    """Train ddpm_digits' network (dropout 0, batch 128) for ``steps`` steps; rank 0 writes steps/s and losses.
    Runs as one process, or as each rank under torchrun (``benchmark.py --ddp-worker OUT``)."""
    from diffedu.distributed import init_distributed, launched_by_torchrun, rank_and_world
    from diffedu.recipes import RECIPES
    from diffedu.train import train

    device = init_distributed("cpu") if launched_by_torchrun() else "cpu"
    recipe = RECIPES["ddpm_digits"]
    cfg = recipe.config(dropout=0.0, steps=steps)
    torch.manual_seed(cfg.seed)
    result = train(recipe.network(cfg), recipe.loss(cfg), recipe.data(cfg), steps=steps, batch_size=cfg.batch_size,
                   lr=cfg.lr, warmup_steps=cfg.warmup_steps, device=device, seed=cfg.seed, progress=False)
    if rank_and_world()[0] == 0:
        Path(out).write_text(json.dumps({"steps_per_s": result.steps_per_s, "losses": result.losses}))


def ddp_speed(rounds: int = 2) -> list[tuple[str, str, str, str]]:
    """Steps/s of ddpm_digits' training (batch 128, dropout 0) on 1 process (1 and 2 threads) and on 2 processes
    of 1 thread each (torchrun, gloo), and the largest difference between the 1- and 2-process loss trajectories."""
    import subprocess
    import tempfile

    runs: dict[str, list[float]] = {}
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for label, threads, launcher in (("1 process, 1 thread", 1, []), ("1 process, 2 threads", 2, []),
                                             ("2 processes, 1 thread each", 1,
                                              ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])):
                out = Path(tmp) / "out.json"
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                subprocess.run([sys.executable, *launcher, str(Path(__file__).resolve()), "--ddp-worker", str(out)],
                               check=True, env=env, capture_output=True)
                report = json.loads(out.read_text())
                runs.setdefault(label, []).append(report["steps_per_s"])
                losses[label] = report["losses"]
    one = losses["1 process, 1 thread"]
    diff = max(abs(a - b) for a, b in zip(one, losses["2 processes, 1 thread each"]))
    base = max(runs["1 process, 1 thread"])
    return [(f"ddpm_digits train, batch 128, {label}", f"{max(v):.2f} steps/s", f"x{max(v) / base:.2f}",
             f"max |loss - 1-process loss| over {DDP_STEPS} steps: {diff:.1e}" if "2 processes" in label else "")
            for label, v in runs.items()]


def run_chapter(path: Path) -> tuple[float, str]:
    """Execute a chapter as the tests do (static widgets, quick mode); return seconds and its text output."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    os.environ["DIFFEDU_STATIC"] = "1"
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    return seconds, text


def diffusers_dpmpp(x_T: torch.Tensor, schedule, steps: int) -> torch.Tensor | None:
    """diffusers' DPMSolverMultistepScheduler (2M, dpmsolver++, its defaults: linspace, final sigma 0) driven by
    the same exact model and x_T (set-up of tests/test_crosscheck_diffusers.py, its float32 buffers kept)."""
    try:
        from diffusers import DPMSolverMultistepScheduler
    except Exception:  # optional
        return None
    from diffedu.toy import ExactModel, eight_gaussians

    model = ExactModel(eight_gaussians(), schedule, "eps")
    sch = DPMSolverMultistepScheduler(num_train_timesteps=schedule.N, trained_betas=schedule.betas[1:].numpy(),
                                      algorithm_type="dpmsolver++", solver_order=2)
    sch.set_timesteps(steps)
    x = x_T.clone()
    for k in sch.timesteps:
        x = sch.step(model(x, torch.tensor((float(k) + 1) / schedule.N, dtype=torch.float64)), k, x).prev_sample
    return x


def per_step_overhead(repeats: int = 15) -> list[tuple[str, str, str, str]]:
    """Seconds per step of a 50-step loop on (128, 1, 16, 16) with a zero-cost model (returns zeros), ours vs
    diffusers' ``step`` (best of ``repeats``, after one warm-up run each; the two are timed interleaved, so a
    load spike on a shared machine hits both). Ours includes the grid set-up (sigmas, times, coefficients); the
    diffusers loop includes ``set_timesteps`` and, as its pipelines do, ``scale_model_input`` before each model
    call (required by its Euler scheduler: the model must see x = x~ / sqrt(sigma^2 + 1); a no-op for DDIM and
    DPM-Solver), which is the counterpart of our x = alpha x~."""
    from diffedu.ddim import ddim_sample
    from diffedu.grids import discrete_sigmas, index_grid, spaced_indices
    from diffedu.samplers import dpmpp_2m_sample, euler_sample

    schedule = linear_schedule(1000)
    x = torch.randn(128, 1, 16, 16)
    zero = lambda x, t, cond=None: torch.zeros_like(x)  # noqa: E731
    K = 50
    sig = discrete_sigmas(schedule, spaced_indices(schedule.N, K, "linspace"))

    def per_step(fn):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times) / K

    indices = index_grid(schedule, K)
    runs = {"DPM-Solver++(2M)": lambda: dpmpp_2m_sample(zero, x, schedule, sig, progress=False),
            "Euler": lambda: euler_sample(zero, x, schedule, sig, progress=False),
            "DDIM": lambda: ddim_sample(zero, x, schedule, indices, progress=False)}
    try:
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
    except Exception:
        return [(f"{n} per step, zero model", f"{per_step(fn) * 1e6:.0f} us", "diffusers missing", "")
                for n, fn in runs.items()]

    def diffusers_loop(cls):
        sch = cls(num_train_timesteps=1000)

        def loop():
            sch.set_timesteps(K)
            y = x.clone()
            for k in sch.timesteps:
                out = zero(sch.scale_model_input(y, k), k)
                y = sch.step(out, k, y).prev_sample
        return loop

    classes = {"DPM-Solver++(2M)": DPMSolverMultistepScheduler, "Euler": EulerDiscreteScheduler,
               "DDIM": DDIMScheduler}
    ours, theirs = {}, {}
    for name, fn in runs.items():
        loop = diffusers_loop(classes[name])
        for _ in range(3):  # interleaved rounds: best per-step time of each over all rounds
            ours[name] = min(ours.get(name, math.inf), per_step(fn))
            theirs[name] = min(theirs.get(name, math.inf), per_step(loop))
    rows = []
    for name in ours:
        rows.append((f"{name} per step, zero model, (128,1,16,16)", f"{ours[name] * 1e6:.0f} us",
                     f"diffusers {theirs[name] * 1e6:.0f} us", f"ratio {ours[name] / theirs[name]:.2f} (need <= 1.0)"))
    return rows


def sampler_rows(quick: bool) -> list[tuple[str, str, str, str]]:
    """Chapter 5 (issue 4): error vs NFE table, observed orders, ours vs diffusers at 10 NFE, per-step overhead."""
    from diffedu.benchmark import format_table, observed_orders, reference_endpoint, sampler_benchmark
    from diffedu.grids import sigma_grid
    from diffedu.samplers import dpmpp_2m_sample
    from diffedu.schedule_search import optimise_schedule
    from diffedu.toy import ExactModel, eight_gaussians

    rows_b = sampler_benchmark(quick=quick)
    print(format_table(rows_b))
    orders = observed_orders(rows_b)
    print("observed orders (slope of log error on log NFE, NFE 10-200):",
          ", ".join(f"{s}/{k} {p:.2f}" for (s, k), p in orders.items()))
    rows = []
    mixture, schedule = eight_gaussians(), linear_schedule(1000)
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref, _ = reference_endpoint(mixture, schedule, x_T)
    model = ExactModel(mixture, schedule, "eps")
    err = lambda x: float((x.double() - ref).pow(2).sum(1).mean().sqrt())  # noqa: E731
    theirs = diffusers_dpmpp(x_T, schedule, 10)
    ours = {grid: err(dpmpp_2m_sample(model, x_T, schedule, sigma_grid(schedule, 10, grid), progress=False))
            for grid in ("logsnr", "time_uniform", "karras")}
    ours["default"] = ours["logsnr"]  # the grid chapter 5 recommends for DPM-Solver++(2M)
    ours["optimised"] = err(dpmpp_2m_sample(model, x_T, schedule,
                                            optimise_schedule(mixture, schedule, 10, "dpmpp_2m").sigmas,
                                            progress=False))
    if theirs is None:
        rows.append(("DPM-Solver++(2M) 10 NFE vs diffusers", "diffusers missing", "", ""))
    else:
        t = err(theirs)
        rows.append(("DPM++(2M) 10 NFE: diffusers (linspace)", f"RMS {t:.3e}", "reference", ""))
        rows.append(("DPM++(2M) 10 NFE: ours, default grid", f"RMS {ours['default']:.3e}",
                     f"ratio {ours['default'] / t:.2f} (need <= 1)", ""))
        for grid, label in (("logsnr", "logSNR-uniform"), ("time_uniform", "time-uniform"),
                            ("karras", "Karras rho=7")):
            rows.append((f"DPM++(2M) 10 NFE: ours, grid={grid!r}", f"RMS {ours[grid]:.3e}",
                         f"ratio {ours[grid] / t:.2f}", label))
        rows.append(("DPM++(2M) 10 NFE: ours, DP-optimised", f"RMS {ours['optimised']:.3e}",
                     f"{100 * (1 - ours['optimised'] / t):.0f}% lower (need >= 20%)", ""))
    rows += per_step_overhead()
    return rows


def distilled_rows(n: int = 1000) -> list[tuple[str, str, str, str]]:
    """Chapter 6 (issue 12): every distilled student and the teacher's solvers at 1, 2, 4, 8 NFE on n samples."""
    from diffedu.distill_recipes import distillation_scoreboard

    table = distillation_scoreboard(n)
    return [(f"{method}, NFE {k} ({n} samples)", f"pixel FD {s['pixel_fd']:.2f}", f"read {100 * s['read']:.0f} %",
             f"feature FD {s['feature_fd']:.1f}") for (method, k), s in table.items()]


def latent_rows() -> list[tuple[str, str, str, str]]:
    """Chapters 7-8 (issue 13): parameters, Gflops, training steps/s and samples/s (batch 64, 25 guided DDIM
    steps + decode) of the pixel UNet, the latent UNet and the DiT, with the reader's accuracy and feature FD."""
    from diffedu.latent_recipes import cost_table

    rows = []
    for name, c in cost_table().items():
        ev = read_manifest()[name]["train_config"]["eval"]
        rows.append((f"{name}: {c['params_m']:.2f} M params, {c['gflops']:.4f} Gflops",
                     f"train {c['train_steps_per_s']:.2f} steps/s", f"sample {c['samples_per_s']:.1f}/s "
                     f"(decoder {100 * c['decoder_share']:.1f} %)",
                     f"read {100 * ev['accuracy_s3']:.1f} %, FD {ev['feature_fd_s3']:.2f} at s = 3"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-chapters", action="store_true")
    parser.add_argument("--samplers", action="store_true", help="add the chapter 5 sampler benchmark")
    parser.add_argument("--quick", action="store_true", help="with --samplers: fewer NFE budgets")
    parser.add_argument("--overhead", action="store_true", help="only the per-step sampler overhead vs diffusers")
    parser.add_argument("--fast-paths", action="store_true", help="only training speed vs diffusers, the fused "
                                                                   "attention and 2 processes")
    parser.add_argument("--distilled", action="store_true", help="only chapter 6's students vs the teacher's "
                                                                  "solvers at 1, 2, 4, 8 NFE")
    parser.add_argument("--latent", action="store_true", help="only chapters 7-8: pixel UNet, latent UNet and DiT "
                                                               "cost and quality")
    parser.add_argument("--scoreboard", action="store_true", help="only chapter 14's scoreboard of every digits "
                                                                   "model (writes data/scoreboard.json)")
    parser.add_argument("--no-record", action="store_true", help="with --scoreboard: print, do not write the JSON")
    parser.add_argument("--ddp-worker", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ddp_worker:
        ddp_worker(args.ddp_worker)
        return
    if args.fast_paths:  # each row as soon as it is measured
        for size in (8, 16, 28):
            print(" | ".join(training_speed_vs_diffusers(sizes=(size,))[0]), flush=True)
        for row in text_unet_attention_speedup() + ddp_speed():
            print(" | ".join(row), flush=True)
        return
    if args.scoreboard:
        from diffedu.family_recipes import format_scoreboard, scoreboard, write_scoreboard

        torch.set_num_threads(1)
        start = time.perf_counter()
        board = scoreboard(200)
        print(format_scoreboard(board))
        print(f"({time.perf_counter() - start:.0f} s on {torch.get_num_threads()} thread)")
        if not args.no_record:
            print(f"recorded in {write_scoreboard(board)}")
        return
    if args.distilled:
        for row in distilled_rows():
            print(" | ".join(row), flush=True)
        return
    if args.latent:
        for row in latent_rows():
            print(" | ".join(row), flush=True)
        return
    if args.overhead:
        for row in per_step_overhead():
            print(" | ".join(row))
        return
    rows = []
    if args.samplers:
        rows += sampler_rows(args.quick)
    if not args.skip_chapters:
        for path in sorted((ROOT / "chapters").glob("*.ipynb")):
            seconds, text = run_chapter(path)
            match = re.search(QUALITY.get(path.stem, r"$^"), text, re.S)
            quality = f"energy distance {match.group(1)}" if match else "-"
            rows.append((f"chapter {path.stem}", f"{seconds:.1f} s", "<= 90 s", quality))
    torch.manual_seed(0)
    mlp = steps_per_second(MLPDenoiser(), torch.randn(128, 2))
    rows.append(("MLPDenoiser train, batch 128 (2-D)", f"{mlp:.0f} steps/s", "", ""))
    unet = steps_per_second(UNet(), torch.randn(128, 1, 8, 8))
    rows.append(("UNet train, batch 128 (1x8x8)", f"{unet:.1f} steps/s", "", ""))
    rows += training_speed_vs_diffusers() + text_unet_attention_speedup() + ddp_speed() + distilled_rows()
    rows += latent_rows()
    for name, entry in read_manifest().items():
        metric = entry["metric"]
        rows.append((f"checkpoint {name}", f"{entry['size_bytes'] / 1e6:.2f} MB",
                     f"{entry['steps']} steps, {entry['wall_time_s'] / 60:.0f} min",
                     f"{metric['name']} {metric['value']}"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    widths = [max(len(r[k]) for r in rows + [("what", "value", "budget / note", "quality")]) for k in range(4)]
    for r in [("what", "value", "budget / note", "quality")] + rows:
        print(" | ".join(cell.ljust(w) for cell, w in zip(r, widths)))
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
