"""Training loops, checkpoints and the one call that loads or trains-and-caches a model."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from rmd_lib.data import sha256_file
from rmd_lib.models import MnistClassifier, WGANCritic, WGANGenerator
from rmd_lib.training import (load_checkpoint, model_config, pretrained_or_train, save_checkpoint,
                              set_seed, train_classifier, train_vae, train_wgan_gp)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def tiny_run(seed, data_seed=0):
    g = torch.Generator().manual_seed(data_seed)
    x, y = torch.rand(40, 1, 6, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    set_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 3))
    losses = train_classifier(net, x, y, epochs=3, batch_size=8, seed=seed, progress=False)
    return net, losses


def test_train_classifier_is_deterministic():
    net_a, loss_a = tiny_run(seed=3)
    net_b, loss_b = tiny_run(seed=3)
    assert len(loss_a) == 3
    assert loss_a == loss_b
    assert same_weights(net_a, net_b)
    net_c, loss_c = tiny_run(seed=4)
    assert loss_c != loss_a and not same_weights(net_a, net_c)


def test_train_classifier_fits_a_small_batch():
    _, losses = tiny_run(seed=0)
    assert losses[-1] < losses[0]


def test_train_classifier_leaves_eval_mode():
    net, _ = tiny_run(seed=0)
    assert not net.training


def test_train_vae_and_wgan_are_deterministic(tiny_mnist):
    from rmd_lib.models import VAE

    def vae_run():
        set_seed(1)
        vae = VAE(latent_dim=2, hidden=8)
        return vae, train_vae(vae, tiny_mnist.x_train, epochs=2, batch_size=32, seed=1, progress=False)

    (v1, h1), (v2, h2) = vae_run(), vae_run()
    assert h1 == h2 and same_weights(v1, v2) and not v1.training

    def gan_run():
        set_seed(2)
        G, D = WGANGenerator(latent_dim=4, width=2), WGANCritic(width=2)
        hist = train_wgan_gp(G, D, tiny_mnist.x_train, iters=2, batch_size=8, n_critic=2, seed=2,
                             progress=False)
        return G, hist

    (g1, k1), (g2, k2) = gan_run(), gan_run()
    assert k1 == k2 and len(k1["critic"]) == 2 and same_weights(g1, g2)


def test_pretrained_or_train_trains_then_reuses_the_cache(tiny_mnist, tiny_profile, tmp_path):
    kw = dict(seed=0, device="cpu", cache_dir=tmp_path, progress=False, verbose=False)
    first = pretrained_or_train("classifier", tiny_mnist, tiny_profile, **kw)
    assert isinstance(first, MnistClassifier) and not first.training
    assert first.provenance.startswith("trained now")
    cached = list(tmp_path.glob("classifier-mnist-*.safetensors"))
    assert len(cached) == 1 and cached[0].name in first.provenance

    second = pretrained_or_train("classifier", tiny_mnist, tiny_profile, **kw)
    assert second.provenance.startswith("cache") and "trained now" not in second.provenance
    # both say how the weights were made: training depends on the CPU thread count
    threads = f"{torch.get_num_threads()} CPU threads"
    assert threads in first.provenance and threads in second.provenance
    assert same_weights(first, second)
    assert list(tmp_path.glob("*.part")) == []

    # The training really moved the weights away from the seed's initialisation.
    set_seed(0)
    assert not same_weights(first, MnistClassifier())


def test_cache_key_follows_the_configuration(tiny_mnist, tiny_profile, tmp_path):
    kw = dict(device="cpu", cache_dir=tmp_path, progress=False, verbose=False)
    a = pretrained_or_train("classifier", tiny_mnist, tiny_profile, seed=0, **kw)
    b = pretrained_or_train("classifier", tiny_mnist, tiny_profile, seed=1, **kw)
    assert b.provenance.startswith("trained now")
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    assert not same_weights(a, b)
    cfg = model_config("classifier", tiny_mnist, tiny_profile, 0)
    assert cfg != model_config("classifier", tiny_mnist, tiny_profile.with_(classifier_epochs=2), 0)


def test_pretrained_or_train_generator(tiny_mnist, tiny_profile, tmp_path):
    G = pretrained_or_train("gan", tiny_mnist, tiny_profile, device="cpu", cache_dir=tmp_path,
                            progress=False, verbose=False)
    assert isinstance(G, WGANGenerator) and G.width == tiny_profile.gan_width
    x = G(G.sample_latent(2))
    assert x.shape == (2, 1, 28, 28)


def test_checkpoint_goes_through_the_same_call(tiny_mnist, tiny_profile, tmp_path, http_server):
    set_seed(5)
    src = MnistClassifier()
    ckpt = save_checkpoint(src, tmp_path / "mine.safetensors")
    kw = dict(device="cpu", cache_dir=tmp_path / "cache", progress=False, verbose=False)
    net = pretrained_or_train("classifier", tiny_mnist, tiny_profile, checkpoint=ckpt, **kw)
    assert net.provenance.startswith("checkpoint") and "mine.safetensors" in net.provenance
    assert same_weights(net, src)
    assert not (tmp_path / "cache").exists()  # nothing was trained or cached

    # A URL checkpoint needs its SHA-256, and is downloaded into the cache and checked.
    (http_server.folder / ckpt.name).write_bytes(ckpt.read_bytes())
    url = http_server.url(ckpt.name)
    with pytest.raises(ValueError, match="sha256"):
        pretrained_or_train("classifier", tiny_mnist, tiny_profile, checkpoint=url, **kw)
    net2 = pretrained_or_train("classifier", tiny_mnist, tiny_profile, checkpoint=url,
                               sha256=sha256_file(ckpt), **kw)
    assert same_weights(net2, src)
    assert (tmp_path / "cache" / "downloads" / "mine.safetensors").exists()


def test_unknown_model_kind(tiny_mnist, tiny_profile):
    with pytest.raises(ValueError, match="'vae'"):
        pretrained_or_train("resnet", tiny_mnist, tiny_profile, device="cpu")


def test_safetensors_round_trip(tmp_path):
    set_seed(0)
    G = WGANGenerator(latent_dim=4, width=2)
    path = save_checkpoint(G, tmp_path / "deep" / "G.safetensors", {"note": "test"})
    assert path.exists() and not list(path.parent.glob("*.part"))
    set_seed(1)
    G2 = WGANGenerator(latent_dim=4, width=2)
    assert not same_weights(G, G2)
    assert load_checkpoint(G2, path) is G2
    assert same_weights(G, G2)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as fh:
        assert '"note": "test"' in fh.metadata()["config"]


def test_pt_state_dict_loads(tmp_path):
    set_seed(0)
    G = WGANGenerator(latent_dim=4, width=2)
    torch.save(G.state_dict(), tmp_path / "G.pt")
    G2 = load_checkpoint(WGANGenerator(latent_dim=4, width=2), tmp_path / "G.pt")
    assert same_weights(G, G2)


def test_mismatched_checkpoint_explains(tmp_path):
    path = save_checkpoint(WGANGenerator(latent_dim=4, width=2), tmp_path / "G.safetensors")
    with pytest.raises(ValueError, match="does not fit WGANGenerator") as err:
        load_checkpoint(WGANGenerator(latent_dim=4, width=3), path)
    assert "width" in str(err.value)
    with pytest.raises(ValueError, match="does not fit MnistClassifier"):
        load_checkpoint(MnistClassifier(), path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(MnistClassifier(), tmp_path / "nope.safetensors")


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    bad = tmp_path / "evil.pt"
    torch.save({"weight": _Payload(marker)}, bad)  # a real checkpoint file, with code inside
    # The payload really is dangerous: plain unpickling runs it.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()
    with pytest.raises(ValueError, match="weights_only=True"):
        load_checkpoint(nn.Linear(2, 2), bad)
    assert not marker.exists()


def test_garbage_safetensors_checkpoint_names_the_file_and_the_format(tmp_path):
    for name, content in [("junk.safetensors", b"not a checkpoint at all" * 4),
                          ("empty.safetensors", b"")]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=r"is not a valid safetensors file") as err:
            load_checkpoint(nn.Linear(2, 2), path)
        msg = str(err.value)
        assert str(path) in msg and "save_checkpoint" in msg and "delete it" in msg
    # A torch.save file under the .safetensors name says which suffix it needs.
    pt = tmp_path / "saved_with_torch.safetensors"
    torch.save(nn.Linear(2, 2).state_dict(), pt)
    with pytest.raises(ValueError, match=r"suffix \.pt"):
        load_checkpoint(nn.Linear(2, 2), pt)


def test_train_classifier_names_a_label_without_a_class():
    x, y = torch.rand(8, 1, 6, 6), torch.tensor([0, 1, 2, 0, 12, 1, 2, 0])
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    message = r"y must lie in \[0, 2\] \(the model has 3 classes\), got 12 "
    with pytest.raises(ValueError, match=message):
        train_classifier(net, x, y, epochs=1, progress=False)


# ----------------------------------------------------------------------------------------
# Seeded initialisation without moving the caller's random state
# ----------------------------------------------------------------------------------------
import random  # noqa: E402

import numpy as np  # noqa: E402

from rmd_lib.training import seeded  # noqa: E402


def rng_states():
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()


def same_states(a, b) -> bool:
    return torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])


def test_seeded_is_set_seed_inside_and_the_callers_state_after():
    set_seed(11)
    before = rng_states()
    with seeded(3):
        inside = (torch.rand(3), random.random(), np.random.rand())
    assert same_states(rng_states(), before)
    set_seed(3)
    assert torch.equal(inside[0], torch.rand(3))
    assert inside[1:] == (random.random(), np.random.rand())


@pytest.mark.parametrize("kind", ["classifier", "vae"])
def test_pretrained_or_train_keeps_the_callers_rng_and_the_weights(kind, tiny_mnist, tiny_profile,
                                                                   tmp_path):
    kw = dict(seed=0, device="cpu", cache_dir=tmp_path, progress=False, verbose=False)
    set_seed(42)
    before = rng_states()
    trained = pretrained_or_train(kind, tiny_mnist, tiny_profile, **kw)
    assert trained.provenance.startswith("trained now")
    assert same_states(rng_states(), before)
    cached = pretrained_or_train(kind, tiny_mnist, tiny_profile, **kw)
    assert cached.provenance.startswith("cache")
    assert same_states(rng_states(), before)
    # The weights are those of the old recipe: set_seed(seed), build, train.
    from rmd_lib.models import VAE
    set_seed(0)
    if kind == "classifier":
        ref = MnistClassifier()
        train_classifier(ref, tiny_mnist.x_train, tiny_mnist.y_train,
                         epochs=tiny_profile.classifier_epochs, batch_size=tiny_profile.batch_size,
                         lr=1e-3, seed=0, progress=False)
    else:
        ref = VAE(latent_dim=20, hidden=500)
        train_vae(ref, tiny_mnist.x_train, epochs=tiny_profile.vae_epochs, batch_size=100, lr=1e-3,
                  seed=0, progress=False)
    assert same_weights(trained, ref) and same_weights(cached, ref)


def test_toy_classifier_keeps_the_callers_rng():
    from rmd_course.toys import toy_classifier, toy_images
    x, y = toy_images(30, seed=1)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    net = toy_classifier(x, y, steps=3, seed=2)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(_first_weight(net), _first_weight(toy_classifier(x, y, steps=3, seed=2)))


def _first_weight(net):
    return next(net.parameters()).detach()


def test_wgan_gp_critic_loss_is_the_formula_of_the_paper():
    from rmd_lib.training import wgan_gp_critic_loss

    torch.manual_seed(0)
    D = WGANCritic(width=2).double()
    g = torch.Generator().manual_seed(1)
    real = torch.rand(6, 1, 28, 28, generator=g, dtype=torch.float64)
    fake = torch.rand(6, 1, 28, 28, generator=g, dtype=torch.float64)
    loss, w = wgan_gp_critic_loss(D, real, fake, gp_weight=10.0,
                                  generator=torch.Generator().manual_seed(7))
    # The same mixing weights, drawn again; the gradient norm per interpolate, one at a time.
    a = torch.rand(6, 1, 1, 1, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    norms = []
    for i in range(6):
        xi = (a[i] * real[i] + (1 - a[i]) * fake[i])[None].requires_grad_(True)
        gi, = torch.autograd.grad(D(xi).sum(), xi)
        norms.append(gi.norm())
    w_ref = D(real).mean() - D(fake).mean()
    ref = -w_ref + 10.0 * ((torch.stack(norms) - 1) ** 2).mean()
    assert torch.allclose(w, w_ref, rtol=1e-12) and torch.allclose(loss, ref, rtol=1e-10)
    # The penalty's graph is kept: the loss has a gradient in D's weights through it.
    loss.backward()
    assert all(p.grad is not None for p in D.parameters())
    with pytest.raises(ValueError, match="same shape"):
        wgan_gp_critic_loss(D, real, fake[:3])
