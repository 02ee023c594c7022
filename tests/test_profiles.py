"""Profiles: lookup by name, the 'auto' choice, and device resolution."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from rmd_lib.profiles import PROFILES, Profile, get_profile, resolve_device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.parametrize("name", ["smoke", "standard", "colab", "paper", "colab-dryrun"])
def test_get_profile_by_name(name):
    p = get_profile(name)
    assert isinstance(p, Profile)
    assert p.name == name
    assert p is PROFILES[name]


def test_names_ignore_case_and_spaces():
    assert get_profile("  Smoke ").name == "smoke"
    assert get_profile("PAPER").name == "paper"


def test_a_profile_object_passes_through():
    custom = PROFILES["smoke"].with_(n_test=7)
    assert get_profile(custom) is custom


def test_budgets_grow_from_smoke_to_paper():
    s, m, p = PROFILES["smoke"], PROFILES["standard"], PROFILES["paper"]
    for field in ("n_test", "classifier_epochs", "vae_epochs", "gan_iters", "proj_steps", "n_attack",
                  "minmax_n", "minmax_steps", "at_steps", "at_pair_steps", "pgd_at_attack_steps",
                  "square_n", "square_queries"):
        assert getattr(s, field) <= getattr(m, field) <= getattr(p, field), field
        assert getattr(s, field) < getattr(p, field), field


def test_colab_keeps_the_promised_sizes():
    c, m = PROFILES["colab"], PROFILES["standard"]
    assert c.n_train is None and c.n_test >= 1000  # full training sets
    for field in ("n_attack", "n_adaptive", "n_transfer", "minmax_n", "n_faces"):
        assert getattr(c, field) >= 1000, field  # accuracies over at least 1,000 images
    assert (c.proj_steps, c.proj_restarts) >= (200, 10)  # Defense-GAN's projection budget
    assert c.dip_size == 224 and c.dip_stop in c.dip_record and c.dip_stop < c.dip_steps
    for field in ("n_test", "n_attack", "minmax_n"):
        assert getattr(c, field) >= getattr(m, field), field


def test_dry_run_keeps_the_sizes_and_cuts_every_iteration_count():
    from rmd_lib.profiles import _ITERATIONS, dry_run
    c, d = PROFILES["colab"], PROFILES["colab-dryrun"]
    assert d == dry_run(c) and d.name == "colab-dryrun"
    assert all(getattr(d, f) == 2 for f in _ITERATIONS)
    for field in ("n_test", "n_attack", "n_adaptive", "proj_restarts", "minmax_n", "n_faces",
                  "began_width", "began_resolution", "dip_size", "dip_width", "n_dip",
                  "batch_size", "eot_samples", "square_n"):
        assert getattr(d, field) == getattr(c, field), field
    assert max(d.dip_record) == d.dip_steps and d.dip_stop in d.dip_record
    assert max(d.sweep_steps) <= d.proj_steps and d.face_proj[0] == 2


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_square_attack_runs_on_a_part_of_the_adaptive_images(name):
    p = PROFILES[name]
    # the chapter runs Square on the first square_n of the images the other attacks use
    assert 1 <= p.square_n <= p.n_adaptive and p.square_queries >= 2, p.name


def test_square_attack_fits_the_gpu_budgets():
    from rmd_lib.evaluation import COLAB_BUDGET_S, H200_TO_T4
    from rmd_lib.profiles import square_seconds_h200
    c, m, p = PROFILES["colab"], PROFILES["standard"], PROFILES["paper"]
    # Each query is a full projection, so Square's worst case (no image fooled early) must
    # leave colab's chapter budget (75 s on an H200) room for the rest: at most half of it.
    assert square_seconds_h200(c) <= COLAB_BUDGET_S / H200_TO_T4 / 2
    assert square_seconds_h200(p) <= 6 * 3600  # paper: hours, not days
    # ... and still more images and queries than the CPU book
    assert c.square_n > m.square_n and c.square_queries >= m.square_queries
    assert p.square_n > c.square_n and p.square_queries > c.square_queries


def test_auto_picks_standard_without_cuda(no_cuda):
    assert get_profile("auto").name == "standard"
    assert get_profile().name == "standard"
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")


def test_auto_picks_colab_with_cuda(fake_cuda):
    assert get_profile("auto").name == "colab"  # paper only when asked for
    assert resolve_device("auto").type == "cuda"
    # An explicit CPU device wins over the CUDA that is present.
    assert get_profile("auto", device="cpu").name == "standard"


def test_unknown_profile_names_the_choices():
    with pytest.raises(ValueError) as err:
        get_profile("turbo")
    msg = str(err.value)
    assert "turbo" in msg
    for name in (*PROFILES, "auto"):
        assert name in msg


def test_profile_of_wrong_type():
    with pytest.raises(TypeError, match="profile must be a name"):
        get_profile(3)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_resolve_device_refuses_absent_cuda(no_cuda, device):
    with pytest.raises(ValueError, match="CUDA") as err:
        resolve_device(device)
    assert "'auto'" in str(err.value) and "'cpu'" in str(err.value)


@pytest.mark.parametrize("device", ["gpu", "banana", "", 2.5])
def test_resolve_device_refuses_nonsense(device):
    with pytest.raises(ValueError, match="not a device name"):
        resolve_device(device)


def test_resolve_device_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_with_returns_a_changed_copy():
    base = PROFILES["smoke"]
    before = base.to_dict()
    changed = base.with_(classifier_epochs=base.classifier_epochs + 7, proj_restarts=5)
    assert changed.classifier_epochs == base.classifier_epochs + 7 and changed.proj_restarts == 5
    assert changed.n_test == base.n_test and changed.name == "smoke"
    assert base.to_dict() == before  # the registered profile is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.n_test = 1


def test_to_dict_has_every_field():
    d = PROFILES["standard"].to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(Profile)}
    assert d["name"] == "standard"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a real CUDA device")
def test_real_cuda_is_picked_by_auto():
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cuda").type == "cuda"
    assert get_profile("auto").name == "colab"


def test_every_field_is_read_somewhere():
    """The profile promises that every field is read by some chapter or library function."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    sources = [p.read_text() for p in sorted(root.glob("notebooks/*.py"))]
    sources += [p.read_text() for p in sorted(root.glob("rmd_lib/**/*.py"))
                if p.name != "profiles.py"]
    text = "\n".join(sources)
    unread = [f.name for f in dataclasses.fields(Profile)
              if f.name not in ("name", "extra")
              and not re.search(rf"\.{f.name}\b|\b{f.name}=|[\"']{f.name}[\"']", text)
              # read by a name built in an f-string, as getattr(P, f"adaptive_drop_{norm}")
              and f.name.rsplit("_", 1)[0] + "_{" not in text]
    assert not unread, f"profile fields nothing reads: {unread}"


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_dip_bpda_budgets_are_among_the_curves(name):
    # chapter 9 reads BPDA's transfer column from the curve's group of the same budget
    P = PROFILES[name]
    assert set(P.dip_bpda_eps) <= set(P.dip_eps) and P.dip_stop in P.dip_record
