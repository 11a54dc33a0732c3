"""The sampler benchmark: a well-formed table, the textbook orders, and the optimised grids never worse."""

import pytest
import torch

from diffedu.benchmark import (DETERMINISTIC, format_table, observed_orders, plot_benchmark, sampler_benchmark,
                               steps_for_nfe)

NFES = (10, 20, 40, 80)


@pytest.fixture(scope="module")
def rows():
    return sampler_benchmark(samplers=("ddim", "euler", "heun", "dpmpp_2m", "plms", "ddpm"), nfes=NFES,
                             max_optimised_nfe=10, batch=128, stochastic_batch=300)


def test_table_is_well_formed(rows):
    keys = {"sampler", "schedule", "budget", "nfe", "steps", "error", "metric", "floor", "seconds"}
    assert rows and all(set(r) == keys for r in rows)
    assert all(r["nfe"] <= r["budget"] and r["error"] >= 0 and r["seconds"] >= 0 for r in rows)
    assert {r["schedule"] for r in rows} == {"default", "optimised"}
    assert {r["metric"] for r in rows if r["sampler"] in DETERMINISTIC} == {"rms_to_exact_endpoint"}
    assert {r["metric"] for r in rows if r["sampler"] == "ddpm"} == {"energy_distance"}
    assert all(r["floor"] < 1e-6 for r in rows if r["metric"] == "rms_to_exact_endpoint")  # reference converged
    assert "NFE 40" in format_table(rows).splitlines()[0]


def test_observed_orders(rows):
    orders = observed_orders(rows, nfe_min=10, nfe_max=80)
    assert 0.8 < orders[("euler", "default")] < 1.3
    assert 0.8 < orders[("ddim", "default")] < 1.3
    assert 1.6 < orders[("heun", "default")] < 2.8
    assert 1.6 < orders[("dpmpp_2m", "default")] < 2.8


def test_optimised_schedule_not_worse(rows):
    err = {(r["sampler"], r["schedule"], r["budget"]): r["error"] for r in rows}
    for s in ("ddim", "euler", "heun", "dpmpp_2m"):
        assert err[(s, "optimised", 10)] <= err[(s, "default", 10)], s


def test_steps_for_nfe_and_bad_input():
    assert steps_for_nfe("heun", 10) == 5 and steps_for_nfe("plms", 10) == 9 and steps_for_nfe("euler", 10) == 10
    assert steps_for_nfe("predictor_corrector", 2) is None
    with pytest.raises(ValueError, match="sampler"):
        steps_for_nfe("rk45", 10)
    with pytest.raises(ValueError, match="samplers"):
        sampler_benchmark(samplers=("rk45",))


def test_plot(rows, tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    fig = plot_benchmark(rows)
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_title()
    fig.savefig(tmp_path / "bench.png")
