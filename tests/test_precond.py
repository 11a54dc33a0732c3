"""InputScaled: EDM's c_in in front of any network, rebuilt from its JSON config."""

import json
import math

import pytest
import torch

from diffedu.nets import InputScaled, UNet, build_net
from diffedu.schedules import VE

INNER = UNet(base_channels=8, channel_mults=(1,), groups=2).config


def randomised(net: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return net.eval()


def test_input_is_scaled_by_c_in_of_the_ve_sigma():
    net = randomised(InputScaled(INNER, sigma_min=0.01, sigma_max=10.0, sigma_data=0.75))
    x = 5 * torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.0, 0.4, 1.0])
    sigma = VE(0.01, 10.0).sigma(t)  # an independent route to sigma(t)
    c_in = (1.0 / torch.sqrt(sigma ** 2 + 0.75 ** 2)).float().reshape(3, 1, 1, 1)
    torch.testing.assert_close(net(x, t), net.inner(c_in * x, t), rtol=1e-5, atol=1e-6)
    assert c_in[-1].item() == pytest.approx(1 / math.sqrt(100 + 0.5625), rel=1e-6)
    # a 0-d time is one time for the whole batch
    torch.testing.assert_close(net(x, torch.tensor(0.4)), net(x, torch.full((3,), 0.4)))


def test_round_trip_through_json_config():
    net = randomised(InputScaled(INNER, sigma_min=0.02, sigma_max=5.0))
    rebuilt = build_net(json.loads(json.dumps(net.config))).eval()
    assert rebuilt.config == net.config and rebuilt.prediction == net.prediction == "eps"
    rebuilt.load_state_dict(net.state_dict())
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    torch.testing.assert_close(rebuilt(x, t), net(x, t), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, name", [(dict(sigma_min=0.0, sigma_max=1.0), "sigma_min"),
                                          (dict(sigma_min=1.0, sigma_max=0.5), "sigma_max"),
                                          (dict(sigma_min=0.01, sigma_max=1.0, sigma_data=-1.0), "sigma_data")])
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        InputScaled(INNER, **kwargs)
