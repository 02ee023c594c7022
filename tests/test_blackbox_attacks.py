"""Substitute-model attacks (Papernot et al. 2017) and the autoencoder substitute for INC."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rmd_lib.attacks import (EncoderSubstitute, fgsm, jacobian_augment, train_encoder,
                             train_substitute)
from rmd_lib.evaluation import accuracy
from rmd_lib.projection import project

from conftest import TINY_SHAPE


class CountingOracle(nn.Module):
    """A label-only black box that counts how many images it was asked about."""

    def __init__(self, net):
        super().__init__()
        self.net, self.asked = net, 0

    def forward(self, x):
        self.asked += len(x)
        return self.net(x)


def _images(n, seed):
    return torch.rand(n, *TINY_SHAPE, generator=torch.Generator().manual_seed(seed))


def _small_substitute():
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.Tanh(), nn.Linear(32, 3))


def test_jacobian_augmentation_steps_along_the_sign_of_the_labelled_logit(tiny_net, tiny_batch):
    x, _ = tiny_batch
    labels = tiny_net(x).argmax(1)
    x_new = jacobian_augment(tiny_net, x * 0.5 + 0.25, labels, 0.1)
    step = x_new - (x * 0.5 + 0.25)
    assert torch.allclose(step.abs(), torch.full_like(step, 0.1), atol=1e-6)
    # The step raises the logit of the oracle's label (first order).
    with torch.no_grad():
        before = tiny_net(x * 0.5 + 0.25).gather(1, labels[:, None])
        after = tiny_net(x_new).gather(1, labels[:, None])
    assert (after > before).all()


def test_substitute_learns_the_oracle_and_counts_its_queries(make_net):
    oracle = CountingOracle(make_net(seed=1))
    x_seed = _images(60, 0)
    sub = train_substitute(oracle, x_seed, rounds=3, lam=0.1, epochs=30,
                           net=_small_substitute(), seed=0)
    assert sub.sizes == [60, 120, 240]
    assert sub.queries == oracle.asked == 240 == len(sub.x) == len(sub.y)
    # Agreement with the oracle on fresh images beats always answering its commonest label.
    x_new = _images(300, 9)
    with torch.no_grad():
        truth = oracle.net(x_new).argmax(1)
    agree = accuracy(sub.net, x_new, truth)
    majority = truth.bincount().max().item() / len(truth)
    assert agree > majority + 0.1


def test_substitute_respects_the_query_budget_and_labels_extra_images(make_net):
    oracle = CountingOracle(make_net(seed=1))
    sub = train_substitute(oracle, _images(20, 0), rounds=4, epochs=2, query_budget=70,
                           x_extra=_images(10, 5), net=_small_substitute(), seed=0)
    assert sub.queries == oracle.asked == 70
    assert sub.sizes[0] == 30
    with pytest.raises(ValueError, match="query_budget"):
        train_substitute(oracle, _images(20, 0), query_budget=10, net=_small_substitute())
    with pytest.raises(ValueError, match="x_extra"):
        train_substitute(oracle, _images(20, 0), x_extra=torch.rand(3, 1, 5, 5),
                         net=_small_substitute())


def test_substitute_training_is_deterministic(make_net):
    runs = [train_substitute(make_net(seed=1), _images(30, 0), rounds=2, epochs=3,
                             net=_seeded_net(), seed=4) for _ in range(2)]
    x = _images(16, 3)
    assert torch.equal(runs[0].net(x), runs[1].net(x))


def _seeded_net():
    torch.manual_seed(11)
    return _small_substitute()


def test_encoder_substitute_approximates_the_projection(tiny_generator, tiny_net):
    G = tiny_generator
    z_true = torch.randn(200, G.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = G(z_true)
    z_star = project(G, x, steps=100, restarts=2, seed=0).z
    enc = nn.Sequential(nn.Flatten(), nn.Linear(36, 64), nn.Tanh(), nn.Linear(64, G.latent_dim))
    before = ((G(enc(x)) - G(z_star)) ** 2).mean().item()
    enc = train_encoder(G, x, z_star, epochs=60, encoder=enc, batch_size=50, seed=0)
    sub = EncoderSubstitute(enc, G, tiny_net)
    with torch.no_grad():
        after = ((sub.reconstruct(x) - G(z_star)) ** 2).mean().item()
    assert after < 0.2 * before
    # G is left as it was: trainable again, and not moved.
    assert all(p.requires_grad for p in G.parameters()) or not list(G.parameters())
    # The substitute is differentiable end to end, so gradient attacks run on it.
    y = tiny_net(x).argmax(1)
    x_adv = fgsm(sub, x, y, 0.2)
    assert (x_adv - x).abs().max() <= 0.2 + 1e-6 and not torch.equal(x_adv, x)


def test_train_encoder_rejects_latents_of_the_wrong_shape(tiny_generator):
    x = _images(10, 0)
    with pytest.raises(ValueError, match="z_star must have shape"):
        train_encoder(tiny_generator, x, torch.zeros(10, 7), epochs=1)


def test_substitute_with_fewer_classes_than_the_oracle_says_num_classes(fixed_logits):
    oracle = fixed_logits([0.0, 0.1, 0.2, 0.3, 5.0])  # always class 4 of 5
    with pytest.raises(ValueError, match=r"oracle labelled an image 4 \(it scores 5 classes\) but "
                                         r"the substitute has only 3 classes; pass num_classes=5"):
        train_substitute(oracle, _images(8, 0), rounds=1, epochs=1, num_classes=3)
    sub = train_substitute(oracle, _images(8, 0), rounds=1, epochs=1, num_classes=5)
    assert (sub.y == 4).all()


# ----------------------------------------------------------------------------------------
# Side effects: the caller's random state and G's trainable flags
# ----------------------------------------------------------------------------------------
from rmd_lib.models import Encoder, SubstituteNet  # noqa: E402
from rmd_lib.projection import InvertAndClassify  # noqa: E402


def _weights(net):
    return torch.cat([t.detach().flatten() for t in net.state_dict().values()])


def test_substitute_with_its_own_net_keeps_the_global_rng_and_its_weights(make_net):
    oracle, x_seed = make_net(seed=1), _images(12, 0)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    sub = train_substitute(oracle, x_seed, rounds=2, epochs=1, num_classes=3, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    # The same weights as seeding by hand, as train_substitute did before it forked the RNG.
    torch.manual_seed(4)
    ref = train_substitute(oracle, x_seed, rounds=2, epochs=1, seed=4,
                           net=SubstituteNet(3, *TINY_SHAPE[:1], TINY_SHAPE[-1]))
    assert torch.equal(_weights(sub.net), _weights(ref.net))


def test_substitute_of_a_randomised_oracle_depends_on_the_seed_alone(tiny_generator, make_net):
    # INC with seed=None draws its restarts from the global RNG: the run sees the seeded
    # stream, as it did before, whatever the caller's state.
    oracle = InvertAndClassify(tiny_generator, make_net(seed=1), seed=None, steps=3, restarts=2)
    runs = []
    for caller_seed in (1, 2):
        torch.manual_seed(caller_seed)
        state = torch.get_rng_state()
        runs.append(train_substitute(oracle, _images(12, 0), rounds=2, epochs=1, num_classes=3, seed=4))
        assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(_weights(runs[0].net), _weights(runs[1].net))
    assert torch.equal(runs[0].y, runs[1].y)


def test_train_encoder_with_its_own_encoder_keeps_the_global_rng_and_its_weights(tiny_generator):
    G, x = tiny_generator, _images(16, 0)
    z_star = torch.randn(16, G.latent_dim, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    enc = train_encoder(G, x, z_star, epochs=2, batch_size=8, seed=6)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(6)
    ref = train_encoder(G, x, z_star, epochs=2, batch_size=8, seed=6,
                        encoder=Encoder(G.latent_dim, 1, TINY_SHAPE[-1]))
    assert torch.equal(_weights(enc), _weights(ref))


class TwoLayerGenerator(nn.Module):
    """A generator with trainable weights in two layers, to freeze one of them."""

    latent_dim = 4

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 36)

    def forward(self, z):
        return torch.sigmoid(self.b(torch.tanh(self.a(z)))).view(-1, *TINY_SHAPE)


def test_train_encoder_gives_g_back_its_own_trainable_flags():
    G = TwoLayerGenerator()
    G.a.weight.requires_grad_(False)  # a mixed state: one tensor frozen by the caller
    flags = [p.requires_grad for p in G.parameters()]
    x, z_star = _images(8, 0), torch.zeros(8, 4)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(36, 4))
    train_encoder(G, x, z_star, epochs=1, encoder=enc, batch_size=4)
    assert [p.requires_grad for p in G.parameters()] == flags
    assert all(p.grad is None for p in G.parameters())  # and G was not trained
    # Also when training fails half-way (here: latents of the wrong width for G).
    with pytest.raises(RuntimeError):
        train_encoder(G, x, z_star, epochs=1, encoder=nn.Sequential(nn.Flatten(), nn.Linear(36, 5)))
    assert [p.requires_grad for p in G.parameters()] == flags
