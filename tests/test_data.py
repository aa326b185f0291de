import pickle

import numpy as np
import pytest
import torch

from qpolicy import data
from qpolicy.datasets import cifar10
from qpolicy.errors import ConfigError, DataError, DataNotFoundError, UnknownNameError
from qpolicy.testing import random_dataset, write_cifar_npz


@pytest.fixture
def npz_home(tmp_path, monkeypatch):
    write_cifar_npz(tmp_path / "datasets", train=100, test=40)
    monkeypatch.setenv("QPOLICY_HOME", str(tmp_path))
    data._CACHE.clear()
    return tmp_path


def test_npz_loader_normalizes_and_batches(npz_home):
    ld = data.loader("cifar10", "test", batch_size=16)
    assert len(ld) == 3 and ld.num_samples == 40 and not ld.shuffle and not ld.augment
    batches = list(ld)
    x, y = batches[0]
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    raw = np.load(npz_home / "datasets" / "cifar10" / "test.npz")["images"][:16]
    mean, std = torch.tensor(cifar10.MEAN).view(1, 3, 1, 1), torch.tensor(cifar10.STD).view(1, 3, 1, 1)
    expect = (torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255 - mean) / std
    assert torch.allclose(x, expect, atol=1e-5)
    assert batches[-1][0].shape[0] == 8


def test_train_loader_is_deterministic_per_seed_and_epoch(npz_home):
    a = data.loader("cifar10", "train", batch_size=32, seed=1)
    b = data.loader("cifar10", "train", batch_size=32, seed=1)
    assert a.shuffle and a.augment
    for (xa, ya), (xb, yb) in zip(a.batches(0), b.batches(0), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    e0, e1 = next(a.batches(0))[1], next(a.batches(1))[1]
    assert not torch.equal(e0, e1)
    # starting at batch 2 gives exactly batches 2.. of the full epoch (what resume relies on)
    full = list(a.batches(3))
    tail = list(a.batches(3, start=2))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(full[2:], tail, strict=True))


def test_crop_flip_geometry():
    img = torch.arange(2 * 4 * 4 * 1, dtype=torch.uint8).reshape(2, 4, 4, 1)
    out = data._crop_flip(img, torch.tensor([[4, 4], [4, 4]]), torch.tensor([False, True]), pad=4)
    assert torch.equal(out[0], img[0]) and torch.equal(out[1], img[1].flip(1))
    shifted = data._crop_flip(img, torch.tensor([[0, 0], [8, 8]]), torch.tensor([False, False]), pad=4)
    assert shifted[0].sum() == 0 and shifted[1].sum() == 0  # fully in the zero padding


def test_limit_and_classes(npz_home):
    ld = data.loader("cifar10", "train", limit=10, seed=3)
    ld2 = data.loader("cifar10", "train", limit=10, seed=3)
    assert ld.num_samples == 10 and torch.equal(ld.indices, ld2.indices)
    present = sorted(set(cifar10.load_cifar10("test").labels.tolist()))[:2]
    only = data.loader("cifar10", "test", classes=present)
    labels = torch.cat([y for _, y in only])
    assert set(labels.tolist()) == set(present)
    with pytest.raises(ConfigError):
        data.loader("cifar10", "test", classes=[10])
    with pytest.raises(ConfigError):
        data.loader("cifar10", "test", limit=0)
    with pytest.raises(UnknownNameError):
        data.loader("cifar100")
    with pytest.raises(ConfigError, match="train, val, test"):
        data.loader("cifar10", "valid")


def test_validation_split_is_held_out_of_train(npz_home):
    n = len(cifar10.load_cifar10("train"))
    train, val = data.loader("cifar10", "train"), data.loader("cifar10", "val")
    assert val.num_samples == min(data.VAL_SIZE, n // 10) > 0
    assert train.num_samples + val.num_samples == n
    assert not set(train.indices.tolist()) & set(val.indices.tolist())
    assert not val.shuffle and not val.augment
    # every seed, limit and the calibration subset stay inside the training part
    calib = data.calib_loader(batches=2, batch_size=4, seed=7)
    assert not set(calib.indices.tolist()) & set(val.indices.tolist())
    assert torch.equal(data.loader("cifar10", "val", seed=5).indices, val.indices)  # fixed, whatever the seed
    # in random order: a prefix of a class-sorted file still holds every class
    first = cifar10.load_cifar10("train").labels[val.indices[: max(1, val.num_samples // 2)]]
    assert len(set(first.tolist())) > 1
    # on CIFAR-10's 50,000 training images: 5,000 held out
    assert len(data.validation_indices(50_000)) == 5000


def test_calib_loader_is_augmented_train_subset(npz_home):
    c = data.calib_loader(batches=2, batch_size=16)
    assert c.augment and not c.shuffle and c.num_samples == 32 and len(c) == 2


def test_batches_py_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    ds = random_dataset(20, size=32, num_classes=10)
    flat = ds.images.numpy().transpose(0, 3, 1, 2).reshape(20, -1)
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": flat[:4], b"labels": ds.labels[:4].tolist()}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": flat, b"labels": ds.labels.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    data._CACHE.clear()
    test = cifar10.load_cifar10("test", data_dir=tmp_path)
    assert torch.equal(test.images, ds.images) and test.classes[3] == "c3"
    assert len(cifar10.load_cifar10("train", data_dir=tmp_path)) == 20


def test_batch_files_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": []}))
    data._CACHE.clear()
    with pytest.raises(DataError, match="refusing"):
        cifar10.load_cifar10("test", data_dir=tmp_path)


def test_missing_data_names_searched_places(tmp_path):
    data._CACHE.clear()
    with pytest.raises(DataNotFoundError) as e:
        cifar10.load_cifar10("test", data_dir=tmp_path / "nothing", download_missing=False)
    assert "test.npz" in str(e.value) and "cifar-10-batches-py" in str(e.value) and "--data-dir" in str(e.value)


def test_corrupt_npz(tmp_path):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "test.npz").write_bytes(b"PK\x03\x04 not really a zip")
    data._CACHE.clear()
    with pytest.raises(DataError, match="cannot read"):
        cifar10.load_cifar10("test", data_dir=tmp_path)


def test_subset_prefixes_mix_classes_even_when_the_file_is_sorted_by_class(tmp_path, monkeypatch):
    # The real train.npz is sorted by class: a subset's first batches must still cover many classes,
    # or BatchNorm re-estimation and activation calibration see one class only.
    ds = random_dataset(1000, size=32, num_classes=10)
    labels = np.repeat(np.arange(10), 100)
    out = tmp_path / "datasets" / "cifar10"
    out.mkdir(parents=True)
    for split in ("train", "test"):
        np.savez(out / f"{split}.npz", images=ds.images.numpy(), labels=labels)
    monkeypatch.setenv("QPOLICY_HOME", str(tmp_path))
    data._CACHE.clear()
    first = next(iter(data.calib_loader(batches=4, batch_size=32)))[1]
    assert len(set(first.tolist())) >= 8
