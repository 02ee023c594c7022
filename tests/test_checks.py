"""Bad input gets a clear error that names the problem (and, where there is one, the fix)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rmd_lib.attacks import bim, fgsm, pgd
from rmd_lib.checks import check_eps, check_images, check_labels, check_positive_int
from rmd_lib.data import load_dataset
from rmd_lib.evaluation import start_run
from rmd_lib.profiles import get_profile
from rmd_lib.projection import InvertAndClassify, project


def test_good_images_pass_unchanged(tiny_batch):
    x, _ = tiny_batch
    assert check_images(x) is x


def test_3d_image_asks_for_unsqueeze():
    with pytest.raises(ValueError, match="unsqueeze") as err:
        check_images(torch.rand(1, 28, 28))
    assert "(1, 28, 28)" in str(err.value)


def test_other_wrong_ndim_names_the_shape():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)") as err:
        check_images(torch.rand(28, 28))
    assert "unsqueeze" not in str(err.value)  # one unsqueeze would not fix a 2-D input


def test_attack_on_3d_image_asks_for_unsqueeze(tiny_net):
    with pytest.raises(ValueError, match="unsqueeze"):
        fgsm(tiny_net, torch.rand(1, 6, 6), torch.tensor([0]), 0.1)


@pytest.mark.parametrize("low, high", [(0.0, 255.0), (0.0, 1.5), (-0.5, 0.5)])
def test_values_outside_unit_interval(low, high):
    x = torch.linspace(low, high, 36).view(1, 1, 6, 6)
    with pytest.raises(ValueError, match=r"\[0, 1\]") as err:
        check_images(x)
    assert "255" in str(err.value) or "normalisation" in str(err.value)


def test_uint8_images_say_divide_by_255():
    with pytest.raises(TypeError, match="uint8") as err:
        check_images(torch.zeros(1, 1, 6, 6, dtype=torch.uint8))
    assert "255" in str(err.value)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_images_ask_for_floats(dtype):
    with pytest.raises(TypeError, match="floating"):
        check_images(torch.zeros(1, 1, 6, 6, dtype=dtype))


def test_numpy_array_is_refused_with_a_conversion_hint():
    with pytest.raises(TypeError, match="torch.Tensor") as err:
        check_images(np.zeros((1, 1, 6, 6), dtype=np.float32))
    assert "as_tensor" in str(err.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_images(bad):
    x = torch.rand(2, 1, 6, 6)
    x[1, 0, 3, 3] = bad
    with pytest.raises(ValueError, match="NaN"):
        check_images(x)


def test_nan_images_through_an_attack(tiny_net):
    x = torch.full((2, 1, 6, 6), float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        pgd(tiny_net, x, torch.tensor([0, 1]), 0.1, steps=2)


def test_empty_batch():
    with pytest.raises(ValueError, match="empty"):
        check_images(torch.zeros(0, 1, 6, 6))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to put x and the model on different devices")
def test_device_mismatch_names_both_devices(tiny_net):
    with pytest.raises(ValueError, match="cuda") as err:
        check_images(torch.rand(2, 1, 6, 6), device=tiny_net.cuda())
    assert ".to(" in str(err.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to put x and the model on different devices")
def test_device_mismatch_in_attacks_and_projection(tiny_net, tiny_generator, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(ValueError, match="model is on cuda"):
        fgsm(tiny_net.cuda(), x, y, 0.1)
    with pytest.raises(ValueError, match="model is on cuda"):
        project(tiny_generator.cuda(), x, steps=2, restarts=1)


@pytest.mark.parametrize("eps", [-0.1, -1, float("inf"), float("nan")])
def test_bad_eps_values(eps):
    with pytest.raises(ValueError, match=">= 0"):
        check_eps(eps)


@pytest.mark.parametrize("eps", ["abc", None, [0.1], object()])
def test_non_numeric_eps(eps):
    with pytest.raises(TypeError, match="must be a number"):
        check_eps(eps)


def test_eps_accepts_numbers_and_scalar_tensors():
    assert check_eps(0) == 0.0
    assert check_eps(0.3) == pytest.approx(0.3)
    assert check_eps(torch.tensor(0.25)) == pytest.approx(0.25)


@pytest.mark.parametrize("attack", [fgsm, bim, pgd])
def test_attacks_refuse_negative_and_non_numeric_eps(attack, tiny_net, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(ValueError, match="eps"):
        attack(tiny_net, x, y, -0.3)
    with pytest.raises(TypeError, match="eps"):
        attack(tiny_net, x, y, "big")


def test_attacks_refuse_unknown_norm(tiny_net, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(ValueError, match="linf"):
        fgsm(tiny_net, x, y, 0.1, norm="l1")


def test_labels_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(4,\)") as err:
        check_labels(torch.zeros(3, dtype=torch.long), 4)
    assert "(3,)" in str(err.value)


def test_labels_shape_mismatch_through_an_attack(tiny_net, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(ValueError, match="match the images"):
        fgsm(tiny_net, x, y[:-1], 0.1)
    with pytest.raises(ValueError, match="match the images"):
        fgsm(tiny_net, x, y.view(-1, 1), 0.1)


def test_float_labels_ask_for_long():
    with pytest.raises(TypeError, match=r"\.long\(\)"):
        check_labels(torch.zeros(4), 4)


def test_labels_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        check_labels(torch.tensor([0, 10]), 2, num_classes=10)


def test_labels_are_returned_as_int64():
    assert check_labels(torch.tensor([1, 2], dtype=torch.int32), 2).dtype == torch.int64


@pytest.mark.parametrize("value", [0, -3, 1.5, True, "5", None])
def test_positive_int_refuses(value):
    with pytest.raises(ValueError, match="integer >= 1"):
        check_positive_int(value, "steps")


def test_unknown_dataset_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="cifar10") as err:
        load_dataset("cifar10", tmp_path, download=False)
    assert "mnist" in str(err.value) and "fashion_mnist" in str(err.value)


def test_unknown_profile_in_start_run(tmp_path):
    with pytest.raises(ValueError, match="Unknown profile 'quick'") as err:
        start_run("ch", profile="quick", device="cpu", results_dir=tmp_path)
    assert "smoke" in str(err.value)
    with pytest.raises(ValueError, match="smoke"):
        get_profile("quick")


@pytest.mark.parametrize("kw, name", [(dict(steps=0), "steps"), (dict(restarts=0), "restarts"),
                                      (dict(steps=-5), "steps"), (dict(batch_size=0), "batch_size")])
def test_project_refuses_zero_counts(tiny_generator, kw, name):
    x = tiny_generator(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=f"{name} must be an integer >= 1"):
        project(tiny_generator, x, **{"steps": 5, "restarts": 2, **kw})


def test_project_refuses_mismatched_generator_output(make_generator):
    G = make_generator(image_shape=(1, 6, 6))
    with pytest.raises(ValueError, match="G makes images of shape") as err:
        project(G, torch.rand(2, 1, 8, 8), steps=2, restarts=1)
    assert "(1, 6, 6)" in str(err.value) and "(1, 8, 8)" in str(err.value)


def test_project_refuses_wrong_z_init(tiny_generator):
    x = tiny_generator(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"z_init must have shape \(6, 4\)"):
        project(tiny_generator, x, steps=2, restarts=3, z_init=torch.zeros(2, 4))


def test_project_needs_latent_dim():
    G = nn.Sequential(nn.Linear(4, 36), nn.Sigmoid(), nn.Unflatten(1, (1, 6, 6)))
    with pytest.raises(TypeError, match="latent_dim"):
        project(G, torch.rand(1, 1, 6, 6), steps=2, restarts=1)


def test_project_refuses_bad_optimizer_lr_and_prune(tiny_generator):
    x = tiny_generator(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="optimizer"):
        project(tiny_generator, x, steps=2, optimizer="lbfgs")
    with pytest.raises(ValueError, match="lr"):
        project(tiny_generator, x, steps=2, lr=-1.0)
    with pytest.raises(ValueError, match="prune"):
        project(tiny_generator, x, steps=2, prune=((1.5, 0.5),))


def test_fgsm_on_invert_and_classify_explains_there_is_no_gradient(tiny_generator, tiny_net, tiny_batch):
    x, y = tiny_batch
    inc = InvertAndClassify(tiny_generator, tiny_net, steps=3, restarts=1)
    with pytest.raises(TypeError, match="carries no gradient") as err:
        fgsm(inc, x, y, 0.1)
    assert "BPDA" in str(err.value)


# ----------------------------------------------------------------------------------------
# Ranges of numeric options, and labels the model has no class for
# ----------------------------------------------------------------------------------------
from rmd_lib.checks import check_betas, check_in_range, check_positive, count_classes  # noqa: E402


@pytest.mark.parametrize("value", [0.5, 1, np.float32(0.25), torch.tensor(1.0)])
def test_in_range_returns_the_value_itself(value):
    assert check_in_range(value, "decay", 0.0, 1.0, low_open=True) is value


@pytest.mark.parametrize("value, kw, where", [
    (0.0, dict(low_open=True), r"in \(0, 1\]"),
    (1.0, dict(high_open=True), r"in \[0, 1\)"),
    (-0.1, {}, r"in \[0, 1\]"),
    (float("nan"), {}, r"in \[0, 1\]"),
])
def test_in_range_names_the_argument_the_interval_and_the_value(value, kw, where):
    with pytest.raises(ValueError, match=where) as err:
        check_in_range(value, "decay", 0.0, 1.0, hint="The default is 0.1.", **kw)
    msg = str(err.value)
    assert msg.startswith("decay must be") and f"got {value!r}" in msg and "default is 0.1" in msg


@pytest.mark.parametrize("value", ["0.1", None, True, [0.1]])
def test_in_range_refuses_non_numbers(value):
    with pytest.raises(TypeError, match="momentum must be a number"):
        check_in_range(value, "momentum", 0.0, 1.0)


@pytest.mark.parametrize("value", [0, -1e-3, float("inf"), float("nan")])
def test_positive_refuses(value):
    with pytest.raises(ValueError, match="lr must be a finite number > 0") as err:
        check_positive(value, "lr", "Try 0.1.")
    assert f"got {value!r}" in str(err.value) and "Try 0.1." in str(err.value)


def test_positive_int_ends_with_the_hint():
    with pytest.raises(ValueError, match=r"patience must be an integer >= 1, got 0\. Use 20\."):
        check_positive_int(0, "patience", "Use 20.")


@pytest.mark.parametrize("betas, match", [((0.9,), "two moment decays"), (0.9, "two moment decays"),
                                          ((1.0, 0.999), r"betas\[0\]"), ((0.9, -0.1), r"betas\[1\]")])
def test_betas(betas, match):
    with pytest.raises((ValueError, TypeError), match=match) as err:
        check_betas(betas)
    assert repr(betas) in str(err.value) or repr(betas[-1]) in str(err.value)
    assert check_betas((0.0, 0.5)) == (0.0, 0.5)


def test_out_of_range_label_message_names_value_and_class_count():
    message = r"y must lie in \[0, 9\] \(the model has 10 classes\), got 12 "
    with pytest.raises(ValueError, match=message) as err:
        check_labels(torch.tensor([3, 12, 0]), 3, num_classes=10)
    assert "[0, 12]" in str(err.value)
    with pytest.raises(ValueError, match=r"got -1"):
        check_labels(torch.tensor([-1, 2]), 2, num_classes=3)


def test_count_classes_leaves_modes_buffers_and_rng_alone():
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.BatchNorm1d(8), nn.Dropout(0.5),
                        nn.Linear(8, 5))
    net.train()
    net[2].eval()  # a mixed state must come back as it was
    modes = [m.training for m in net.modules()]
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    x = torch.rand(4, 1, 6, 6)
    rng = torch.get_rng_state()
    # One image in training mode would make BatchNorm1d fail; the probe runs in eval mode.
    assert count_classes(net, x) == 5
    assert [m.training for m in net.modules()] == modes
    assert all(torch.equal(v, buffers[k]) for k, v in net.named_buffers())
    assert torch.equal(torch.get_rng_state(), rng)
    noisy = lambda v: v.flatten(1)[:, :7] + torch.randn(len(v), 7)  # noqa: E731 - a random model
    assert count_classes(noisy, x) == 7
    assert torch.equal(torch.get_rng_state(), rng)
    assert count_classes(lambda v: v, torch.rand(2, 1, 6, 6)) is None  # not (1, K) logits


def test_count_classes_of_a_projection_defense_runs_no_projection(tiny_generator, tiny_net):
    from rmd_lib.attacks import BPDA
    inc = InvertAndClassify(tiny_generator, tiny_net, seed=0, steps=3, restarts=2)
    assert count_classes(inc, torch.rand(2, 1, 6, 6)) == 3
    assert count_classes(BPDA(inc), torch.rand(2, 1, 6, 6)) == 3
    assert inc.last is None and (inc.draws.offset, inc.draws.call) == (0, 0)


def test_count_classes_of_the_dip_defense_fits_nothing():
    from torch import nn
    from rmd_lib.dip import DIPBPDA, DIPDefense
    clf = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 5))
    defense = DIPDefense(clf, 1000, width=8, depth=2, skip=2, noise_channels=4)
    x = torch.rand(2, 3, 16, 16)
    assert count_classes(defense, x) == 5 and count_classes(DIPBPDA(defense), x) == 5
    assert defense.draws.call == 0  # no fit ran (1,000 steps would show in the time, too)


def _attack_calls():
    from rmd_lib.attacks import BPDA, cw_l2, jacobian_augment, latent_space_attack
    return {
        "fgsm": lambda net, inc, x, y: fgsm(net, x, y, 0.1),
        "bim": lambda net, inc, x, y: bim(net, x, y, 0.1, steps=2),
        "pgd l2": lambda net, inc, x, y: pgd(net, x, y, 0.5, norm="l2", steps=2),
        "cw_l2": lambda net, inc, x, y: cw_l2(net, x, y, steps=2, binary_steps=1),
        "latent": lambda net, inc, x, y: latent_space_attack(inc, x, y, 0.5, steps=2),
        "pgd on BPDA": lambda net, inc, x, y: pgd(BPDA(inc), x, y, 0.1, steps=2),
        "pgd on tangent BPDA": lambda net, inc, x, y: pgd(BPDA(inc, backward="tangent"), x, y, 0.1,
                                                          steps=2),
        "jacobian_augment": lambda net, inc, x, y: jacobian_augment(net, x, y, 0.1),
    }


@pytest.mark.parametrize("name", sorted(_attack_calls()))
def test_every_attack_names_a_label_without_a_class(name, tiny_generator, tiny_net, tiny_batch):
    x, y = tiny_batch  # the tiny net has 3 classes
    inc = InvertAndClassify(tiny_generator, tiny_net, seed=0, steps=3, restarts=1)
    y = y.clone()
    y[2] = 12
    which = "labels" if name == "jacobian_augment" else "y"
    message = rf"{which} must lie in \[0, 2\] \(the model has 3 classes\), got 12 "
    with pytest.raises(ValueError, match=message):
        _attack_calls()[name](tiny_net, inc, x, y)
