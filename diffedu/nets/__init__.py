"""Denoising networks. Every one is called ``net(x, t, cond=None)`` with continuous time t in [0, 1], returns a
tensor shaped like x, says what that tensor is in ``net.prediction`` ("eps", "x0", "v" or "score"), and carries a
JSON-serialisable ``net.config`` from which :func:`build_net` rebuilds the same architecture (for checkpoints).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .autocast import Autocast
from .autoencoder import Autoencoder
from .dit import DiT
from .embeddings import PREDICTIONS, SinusoidalEmbedding, TimeMLP, sinusoidal_embedding
from .mlp import MLPDenoiser
from .classifier import DigitReader, NoisyClassifier
from .precond import InputScaled
from .text import TextEncoder, TextToImageUNet, Tokenizer
from .unet import UNet, set_fused_attention
from .tangent import TangentMLP
from .video import TemporalAttention, TextToVideoUNet
from .distilled import ConsistencyModel, StepStudent
from ..autoregressive import MADE
from ..families import GAN, VAE
from ..flow_matching import FlowMatchingModel
from ..flows import CouplingFlow

#: Network classes by name, as written in ``config["name"]``.
NETS: dict[str, type[nn.Module]] = {"MLPDenoiser": MLPDenoiser, "UNet": UNet, "InputScaled": InputScaled,
                                    "NoisyClassifier": NoisyClassifier, "TextToImageUNet": TextToImageUNet,
                                    "TangentMLP": TangentMLP, "TextToVideoUNet": TextToVideoUNet,
                                    "StepStudent": StepStudent, "ConsistencyModel": ConsistencyModel,
                                    "Autoencoder": Autoencoder, "DigitReader": DigitReader,
                                    "DiT": DiT,
                                    # chapter 14's other families (not denoisers: no t, no prediction)
                                    "VAE": VAE, "GAN": GAN, "MADE": MADE, "CouplingFlow": CouplingFlow,
                                    "FlowMatchingModel": FlowMatchingModel}


def build_net(config: dict[str, Any]) -> nn.Module:
    """Rebuild a network from its ``config``: ``{"name": class name, **constructor kwargs}``.

    ``build_net(net.config)`` has the same parameters (names and shapes) as ``net``, so
    ``build_net(net.config).load_state_dict(net.state_dict())`` restores it exactly.
    """
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"config must be a dict with a 'name' key, got {config!r}")
    if config["name"] not in NETS:
        raise ValueError(f"config['name'] must be one of {sorted(NETS)}, got {config['name']!r}")
    kwargs = {key: value for key, value in config.items() if key != "name"}
    try:
        return NETS[config["name"]](**kwargs)
    except TypeError as error:  # an unknown keyword
        raise ValueError(f"config has an argument {config['name']} does not take: {error}") from None


__all__ = ["PREDICTIONS", "NETS", "Autocast", "set_fused_attention",
           "SinusoidalEmbedding", "TimeMLP", "sinusoidal_embedding", "MLPDenoiser", "UNet",
           "InputScaled", "NoisyClassifier", "Tokenizer", "TextEncoder", "TextToImageUNet", "TangentMLP",
           "TemporalAttention", "TextToVideoUNet", "StepStudent", "ConsistencyModel", "Autoencoder", "DigitReader", "DiT", "build_net"]
