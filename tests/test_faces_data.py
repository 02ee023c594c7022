"""Faces: the CelebA loader on a copy the test writes in CelebA's on-disk format, and the stand-in."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rmd_lib import data
from rmd_lib.data import (CELEBA_CROP, DataUnavailableError, FASHION_DEBIAN_DIR, load_celeba,
                          load_dataset, load_face_standin, load_faces)

# CelebA's 40 attributes, in the order of list_attr_celeba.txt ("Male" is the 21st).
ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes "
    "No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling "
    "Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young"
).split()
# Nine images: 5 train, 2 valid, 2 test; each has its own grey level inside BEGAN's crop box.
PARTITION = [0, 0, 0, 0, 0, 1, 1, 2, 2]
MALE = [1, 0, 0, 1, 1, 0, 1, 1, 0]
LEVELS = [40 + 20 * i for i in range(9)]
FILES = [f"{i + 1:06d}.jpg" for i in range(9)]


def write_celeba(root, n=9):
    """Write CelebA's layout: 178x218 JPEGs, list_attr_celeba.txt, list_eval_partition.txt."""
    (root / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, level in zip(FILES[:n], LEVELS):
        # Black outside the crop box and a flat grey inside, so the crop can be checked.
        img = np.zeros((218, 178, 3), dtype=np.uint8)
        left, top, right, bottom = CELEBA_CROP
        img[top:bottom, left:right] = level
        Image.fromarray(img).save(root / "img_align_celeba" / name, quality=95)
    lines = [str(n), " ".join(ATTRIBUTES) + " "]  # the real header ends with a space
    for i, name in enumerate(FILES[:n]):
        values = [int(v) for v in rng.choice([-1, 1], size=40)]
        values[ATTRIBUTES.index("Male")] = 1 if MALE[i] else -1
        lines.append(name + " " + " ".join(f"{v:2d}" for v in values))  # " 1" and "-1": runs of spaces
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{name} {p}\n" for name, p in zip(FILES[:n], PARTITION)))
    return root


@pytest.fixture
def celeba(tmp_path):
    return write_celeba(tmp_path / "celeba")


def levels_of(x):
    """The file each image came from, read back from its grey level."""
    return [int(np.argmin([abs(float(img.mean()) * 255 - lv) for lv in LEVELS])) for img in x]


def test_train_split_shapes_range_and_labels(celeba):
    x, y = load_celeba(celeba, "train", size=32)
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert y.dtype == torch.int64 and y.tolist() == MALE[:5]
    assert levels_of(x) == [0, 1, 2, 3, 4]
    # Only the crop box is kept: the images are flat grey, with none of the black border.
    for img, i in zip(x, levels_of(x)):
        assert (img * 255 - LEVELS[i]).abs().max() < 12


@pytest.mark.parametrize("split, files", [("valid", [5, 6]), ("test", [7, 8]),
                                          ("all", list(range(9)))])
def test_the_official_partition_is_respected(celeba, split, files):
    x, y = load_celeba(celeba, split, size=64)
    assert x.shape == (len(files), 3, 64, 64)
    assert levels_of(x) == files
    assert y.tolist() == [MALE[i] for i in files]


def test_n_caps_with_a_fixed_subset_of_the_split(celeba):
    x, y = load_celeba(celeba, "train", size=32, n=3)
    assert len(x) == len(y) == 3
    picked = levels_of(x)
    assert set(picked) <= set(range(5)) and len(set(picked)) == 3
    assert y.tolist() == [MALE[i] for i in picked]
    again, _ = load_celeba(celeba, "train", size=32, n=3)
    assert torch.equal(x, again)
    with pytest.raises(ValueError, match=">= 1"):
        load_celeba(celeba, "train", n=0)


def test_root_from_the_environment_and_torchvision_layout(celeba, monkeypatch):
    monkeypatch.setenv("RMD_CELEBA_DIR", str(celeba))
    assert len(load_celeba(split="test", size=32)[0]) == 2
    # torchvision's CelebA(root) keeps the files in <root>/celeba
    monkeypatch.setenv("RMD_CELEBA_DIR", str(celeba.parent))
    assert len(load_celeba(split="test", size=32)[0]) == 2


def test_unknown_split(celeba):
    with pytest.raises(ValueError, match="'valid'"):
        load_celeba(celeba, "val")


@pytest.mark.parametrize("missing", ["img_align_celeba", "list_attr_celeba.txt",
                                     "list_eval_partition.txt"])
def test_a_missing_file_is_named_with_how_to_get_celeba(celeba, missing):
    path = celeba / missing
    if path.is_dir():
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    else:
        path.unlink()
    with pytest.raises(DataUnavailableError) as err:
        load_celeba(celeba, "train")
    msg = str(err.value)
    assert missing in msg and "mmlab.ie.cuhk.edu.hk" in msg and "RMD_CELEBA_DIR" in msg
    assert "kaggle" in msg.lower() and "torchvision" in msg


def test_a_missing_image_is_named(celeba):
    (celeba / "img_align_celeba" / FILES[2]).unlink()
    with pytest.raises(DataUnavailableError, match=FILES[2]):
        load_celeba(celeba, "train")
    assert len(load_celeba(celeba, "test")[0]) == 2  # other splits still load


def rewrite_line(path, number, new):
    lines = path.read_text().splitlines()
    lines[number] = new(lines[number])
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("edit, match", [
    (lambda p: rewrite_line(p, 0, lambda s: "12"), "announces 12 images"),
    (lambda p: rewrite_line(p, 0, lambda s: "images"), "first line"),
    (lambda p: rewrite_line(p, 1, lambda s: s.replace("Male", "Mail")), "no 'Male'"),
    (lambda p: rewrite_line(p, 4, lambda s: s.rsplit(" ", 1)[0]), "line 5"),
    (lambda p: rewrite_line(p, 3, lambda s: s.replace("-1", " 0", 1)), "line 4"),
])
def test_a_malformed_attribute_file_is_refused(celeba, edit, match):
    path = celeba / "list_attr_celeba.txt"
    edit(path)
    with pytest.raises(DataUnavailableError, match=match) as err:
        load_celeba(celeba, "train")
    assert "list_attr_celeba.txt is malformed" in str(err.value)


def test_a_malformed_partition_file_is_refused(celeba):
    path = celeba / "list_eval_partition.txt"
    rewrite_line(path, 1, lambda s: s.replace(" 0", " 3"))
    with pytest.raises(DataUnavailableError, match="list_eval_partition.txt is malformed: line 2"):
        load_celeba(celeba, "train")
    rewrite_line(path, 1, lambda s: "")
    with pytest.raises(DataUnavailableError, match="no partition for 1 images"):
        load_celeba(celeba, "train")


@pytest.mark.parametrize("failure, expected", [
    # torchvision's message, and gdown's, when Google Drive's quota is used up
    (RuntimeError("The daily quota of the file img_align_celeba.zip is exceeded and it can't be "
                  "downloaded. This is a limitation of Google Drive."), "quota"),
    (RuntimeError("Failed to retrieve file url:\n\n\tToo many users have viewed or downloaded "
                  "this file recently."), "quota"),
    (RuntimeError("To download files from GDrive, 'gdown' is required."), "gdown"),
    (OSError("[Errno -3] Temporary failure in name resolution"), "name resolution"),
])
def test_a_failed_download_is_explained(monkeypatch, tmp_path, failure, expected):
    import torchvision.datasets

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(torchvision.datasets, "CelebA", fail)
    with pytest.raises(DataUnavailableError) as err:
        load_celeba(tmp_path, download=True)
    msg = str(err.value)
    assert msg.startswith("torchvision could not download CelebA")
    assert expected in msg and "mmlab.ie.cuhk.edu.hk" in msg
    if expected == "quota":
        assert "Google Drive" in msg


def test_load_faces_uses_celeba_when_present(celeba, capsys):
    ds, is_standin = load_faces(celeba, size=32, n_train=4)
    assert not is_standin
    assert ds.name == "celeba" and ds.classes == ["female", "male"]
    assert ds.x_train.shape == (4, 3, 32, 32) and ds.x_test.shape == (2, 3, 32, 32)
    assert "CelebA" in ds.source and "stand-in" not in ds.source
    assert capsys.readouterr().out.count("\n") == 1


needs_fashion = pytest.mark.skipif(
    not FASHION_DEBIAN_DIR.is_dir(),
    reason=f"{FASHION_DEBIAN_DIR} is absent: install the Debian package dataset-fashion-mnist")


def test_load_faces_falls_back_to_the_standin_and_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data, "load_face_standin",
                        lambda size, n_train, n_test, download, data_dir=None: ("standin", size, n_train, n_test))
    ds, is_standin = load_faces(tmp_path / "nowhere", size=32, n_train=10, n_test=5)
    assert is_standin and ds == ("standin", 32, 10, 5)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "stand-in" in out and "NOT CelebA" in out
    assert "img_align_celeba is missing" in out
    with pytest.raises(DataUnavailableError, match="img_align_celeba"):
        load_faces(tmp_path / "nowhere", allow_standin=False)


@pytest.fixture(scope="module")
def standin():
    return load_face_standin(32, download=False)


@needs_fashion
def test_standin_is_labelled_as_a_standin(standin):
    assert "standin" in standin.name and "celeba" not in standin.name.lower()
    assert standin.source.startswith("stand-in for CelebA: ")
    assert standin.classes == ["T-shirt/top", "Shirt"]
    assert "celeba" not in repr(standin).split("source=")[0].lower()


@needs_fashion
def test_standin_has_only_t_shirts_and_shirts(standin):
    # Fashion-MNIST has 6,000 / 1,000 images of each class.
    assert standin.x_train.shape == (12000, 1, 32, 32) and standin.x_test.shape == (2000, 1, 32, 32)
    for y in (standin.y_train, standin.y_test):
        assert y.dtype == torch.int64 and torch.bincount(y).tolist() == [len(y) // 2] * 2
    for x in (standin.x_train, standin.x_test):
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # Every image is an upscaled T-shirt/top (label 0) or Shirt (label 1) of Fashion-MNIST.
    fashion = load_dataset("fashion_mnist", download=False, verbose=False)
    keep = (fashion.y_test == 0) | (fashion.y_test == 6)
    up = torch.nn.functional.interpolate(fashion.x_test[keep], size=(32, 32), mode="bilinear",
                                         align_corners=False)
    label_of = {img.numpy().tobytes(): int(lab == 6) for img, lab in zip(up, fashion.y_test[keep])}
    assert [label_of[img.numpy().tobytes()] for img in standin.x_test] == standin.y_test.tolist()


@needs_fashion
def test_standin_sizes_and_caps():
    small = load_face_standin(64, n_train=50, n_test=20, download=False)
    assert small.x_train.shape == (50, 1, 64, 64) and small.x_test.shape == (20, 1, 64, 64)
    assert set(small.y_train.tolist()) <= {0, 1}
    again = load_face_standin(64, n_train=50, n_test=20, download=False)
    assert torch.equal(small.x_train, again.x_train)
