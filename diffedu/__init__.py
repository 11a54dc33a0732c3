"""diffedu: the reference library of the runnable diffusion textbook.

One module per concept; the book prints their source. See ``DESIGN.md`` for the contract every chapter speaks:
x_t = alpha(t) * x0 + sigma(t) * eps with continuous t in [0, 1], networks ``net(x, t, cond=None)`` that declare
what they predict, samplers as plain functions.
"""

__version__ = "0.1.0"
