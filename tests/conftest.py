"""Pytest hooks shared by the book's tests.

Any test with an argument named ``ipynb`` runs once per ``notebooks/*.ipynb``, and is
skipped while there are none.
"""
from __future__ import annotations

import http.server
import threading
from collections import Counter
from pathlib import Path

import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"


class Served:
    """Files served over HTTP on 127.0.0.1: put them in ``folder``; ``url(name)`` is where
    they are served; ``hits`` counts the GET requests per path."""

    def __init__(self, folder: Path, base: str):
        self.folder, self.base, self.hits = folder, base, Counter()

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server (http.server in a thread) for download tests; no network needed."""
    folder = tmp_path / "served"
    folder.mkdir()
    served = None

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def do_GET(self):
            served.hits[self.path.lstrip("/")] += 1
            super().do_GET()

        def log_message(self, *args):  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served = Served(folder, f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "ipynb" not in metafunc.fixturenames:
        return
    paths = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    if paths:
        metafunc.parametrize("ipynb", paths, ids=[p.stem for p in paths])
    else:
        skip = pytest.mark.skip(reason="no notebooks/*.ipynb yet")
        metafunc.parametrize("ipynb", [pytest.param(None, marks=skip)], ids=["none"])


# ----------------------------------------------------------------------------------------
# Tiny models and data for the library's unit tests. They test mechanics, not results, so
# random weights are fine; everything is seeded and runs on the CPU in milliseconds.
# ----------------------------------------------------------------------------------------
import math

import torch
from torch import nn

from rmd_lib.data import MNIST_CLASSES, Dataset

TINY_SHAPE = (1, 6, 6)


class LinearGenerator(nn.Module):
    """G(z) = sigmoid(W z + b), reshaped to ``image_shape``: a fixed random map with a latent prior."""

    def __init__(self, latent_dim: int = 4, image_shape=TINY_SHAPE, seed: int = 0):
        super().__init__()
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)
        g = torch.Generator().manual_seed(seed)
        n_pixels = math.prod(self.image_shape)
        self.register_buffer("weight", torch.randn(n_pixels, latent_dim, generator=g))
        self.register_buffer("bias", 0.1 * torch.randn(n_pixels, generator=g))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z @ self.weight.T + self.bias).view(-1, *self.image_shape)

    def sample_latent(self, n, generator=None, device=None):
        return torch.randn(n, self.latent_dim, generator=generator, device=device)


class FixedLogits(nn.Module):
    """A 'classifier' that ignores its input and always returns the same logits (no gradient)."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1).clone()


def make_tiny_net(num_classes: int = 3, image_shape=TINY_SHAPE, hidden: int = 32, seed: int = 0) -> nn.Module:
    """A small random-weight MLP classifier on ``image_shape`` images, in eval mode."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(image_shape), hidden), nn.Tanh(),
                        nn.Linear(hidden, num_classes))
    return net.eval()


@pytest.fixture
def tiny_generator() -> LinearGenerator:
    return LinearGenerator()


@pytest.fixture
def tiny_net() -> nn.Module:
    return make_tiny_net()


@pytest.fixture
def tiny_batch():
    """Eight 1x6x6 images in [0, 1] and labels in {0, 1, 2}."""
    g = torch.Generator().manual_seed(123)
    return torch.rand(8, *TINY_SHAPE, generator=g), torch.randint(0, 3, (8,), generator=g)


@pytest.fixture
def tiny_mnist() -> Dataset:
    """A 'mnist' Dataset of 64 train / 32 test random 28x28 images (for training mechanics)."""
    g = torch.Generator().manual_seed(7)
    return Dataset(name="mnist",
                   x_train=torch.rand(64, 1, 28, 28, generator=g),
                   y_train=torch.arange(64) % 10,
                   x_test=torch.rand(32, 1, 28, 28, generator=g),
                   y_test=torch.arange(32) % 10,
                   classes=list(MNIST_CLASSES), source="made by the test (random images)")


@pytest.fixture
def tiny_profile():
    from rmd_lib.profiles import get_profile
    return get_profile("smoke").with_(classifier_epochs=1, vae_epochs=1, gan_iters=2, gan_width=4,
                                      batch_size=32)


@pytest.fixture
def make_generator():
    """The :class:`LinearGenerator` class, for tests that need other sizes or seeds."""
    return LinearGenerator


@pytest.fixture
def make_net():
    """:func:`make_tiny_net`, for tests that need other sizes or seeds."""
    return make_tiny_net


@pytest.fixture
def fixed_logits():
    """The :class:`FixedLogits` class."""
    return FixedLogits
