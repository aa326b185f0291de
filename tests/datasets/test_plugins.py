"""The data plugins: a contract over every registered one, then each plugin's own rules and refusals."""

import numpy as np
import pytest
import torch

from qpolicy import data, datasets
from qpolicy.datasets import DataOptions
from qpolicy.errors import ConfigError, DataError, DataNotFoundError, UnknownNameError
from qpolicy.testing import write_cifar_npz, write_digits


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar_npz(root / "cifar", train=200, test=50)
    return {"cifar10": ("cifar10", DataOptions(data_dir=str(root / "cifar"))),
            "imagefolder": (write_digits(root / "folder", limit=300), DataOptions()),
            "npz": (write_digits(root / "npz", fmt="npz", limit=300), DataOptions())}


def test_every_registered_plugin_gives_three_disjoint_splits_the_loader_can_batch(specs):
    assert set(datasets.names()) == set(specs)  # a new plugin must be added to this contract
    for name in datasets.names():
        spec, options = specs[name]
        src = datasets.source(spec, options)
        seen = {}
        for split in datasets.SPLITS:
            ds, idx = src.split(split)
            assert len(idx) > 0
            seen[split] = {(id(ds), i) for i in idx.tolist()}  # an index means an image of that file
            x, y = next(iter(data.loader(src, split, batch_size=7)))
            assert tuple(x.shape[1:]) == src.input_shape and x.dtype == torch.float32 and len(y) == min(7, len(idx))
        assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) \
            and not (seen["val"] & seen["test"]), name
        rec = src.to_dict()
        assert rec["spec"] == spec and rec["splits"] and len(rec["mean"]) == src.input_shape[0]
    assert datasets.default_spec() == "cifar10"


def test_select_and_report_are_fixed_stratified_halves_of_test(specs):
    for name in datasets.names():
        src = datasets.source(*specs[name])
        ds, test = src.split("test")
        _, sel = src.split("select")
        _, rep = src.split("report")
        assert sorted(sel.tolist() + rep.tolist()) == sorted(test.tolist()), name  # disjoint, together the test split
        assert abs(len(sel) - len(rep)) <= len(ds.classes), name
        for c in torch.unique(ds.labels[test]).tolist():  # each class halved (rounding: one image either way)
            assert abs(int((ds.labels[sel] == c).sum()) - int((ds.labels[rep] == c).sum())) <= 1, (name, c)
        assert torch.equal(datasets.source(*specs[name]).split("select")[1], sel)  # fixed
        assert data.loader(src, "report", batch_size=5).split == "report"


def test_image_folder_pixels_are_the_files_scaled_to_unit_range_and_the_split_is_stratified(specs):
    src = datasets.source(*specs["imagefolder"])
    assert src.input_shape == (1, 8, 8) and src.mean == (0.0,) and src.std == (1.0,)
    ds, val = src.split("val")
    ld = data.loader(src, "val", batch_size=len(val))
    x, y = next(iter(ld))
    assert torch.allclose(x, ds.images[val].permute(0, 3, 1, 2).float() / 255.0, atol=1e-6, rtol=0)
    from qpolicy.testing import digits_arrays

    imgs, labels = digits_arrays()
    total = np.bincount(labels[:300], minlength=10)
    got = np.bincount(y.numpy(), minlength=10)
    assert np.all(np.abs(got - 0.1 * total) <= 1)  # 10% of every class, rounded
    assert "0.1 of each class" in src.splits_rule
    # pixels the files hold: the first image of class 0 is digit image 0
    first = ds.images[ds.labels == 0][0, :, :, 0].numpy()
    assert np.array_equal(first, imgs[0])


def test_image_folder_resize_channels_and_normalization(tmp_path):
    spec = write_digits(tmp_path / "d", limit=60)
    src = datasets.source(spec, DataOptions(image_size=(16, 12), channels=3, mean=(0.5,), std=(0.25,)))
    assert src.input_shape == (3, 16, 12) and src.mean == (0.5,) * 3 and src.std == (0.25,) * 3
    x, _ = next(iter(data.loader(src, "train")))
    assert x.shape[1:] == (3, 16, 12) and float(x.min()) >= -2.0 and float(x.max()) <= 2.0


def test_image_folder_with_split_folders_keeps_them(tmp_path):
    from PIL import Image

    for split, n in (("train", 6), ("test", 3)):
        for c in ("cat", "dog"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((5, 5, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    src = datasets.source(f"imagefolder:{tmp_path}")
    assert src.classes == ("cat", "dog") and src.input_shape == (3, 5, 5)
    assert len(src.split("test")[1]) == 6 and len(src.split("val")[1]) == 2  # val: 1 of each class of train
    assert "test: given" in src.splits_rule


def test_npz_per_split_arrays(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"{s}_{k}": v for s, n in (("train", 40), ("val", 10), ("test", 12))
              for k, v in (("images", rng.integers(0, 256, (n, 6, 6), dtype=np.uint8)),
                           ("labels", rng.integers(0, 3, n)))}
    np.savez(tmp_path / "d.npz", **arrays)
    src = datasets.source(f"npz:{tmp_path / 'd.npz'}")
    assert [len(src.split(s)[1]) for s in datasets.SPLITS] == [40, 10, 12]
    x, y = next(iter(data.loader(src, "test", batch_size=100)))
    assert torch.equal(y, torch.from_numpy(arrays["test_labels"]))


def test_factory_data_of_arrays_and_of_loaders(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(
        "import numpy as np, torch\n"
        "def arrays():\n"
        "    rng = np.random.default_rng(0)\n"
        "    return {'train': (rng.integers(0, 256, (30, 4, 4), dtype=np.uint8), rng.integers(0, 2, 30))}\n"
        "def loaders():\n"
        "    b = [(torch.zeros(2, 3), torch.tensor([0, 1]))]\n"
        "    return {'train': b, 'val': b, 'test': b}\n")
    monkeypatch.chdir(tmp_path)
    src = datasets.source("mydata:arrays")  # importable from the current folder
    assert src.input_shape == (1, 4, 4) and sum(len(src.split(s)[1]) for s in datasets.SPLITS) == 30
    src = datasets.source(f"{tmp_path / 'mydata.py'}:loaders")
    ld = data.loader(src, "val", limit=1)
    assert [b[1].tolist() for b in ld] == [[0]]  # the limit cuts the user's batch


@pytest.mark.parametrize("spec, options, error, words", [
    ("cifar100", DataOptions(), UnknownNameError, "cifar10"),
    ("imagefolder", DataOptions(), ConfigError, "needs a folder"),
    ("imagefolder:/no/such/dir", DataOptions(), DataNotFoundError, "not found"),
    ("npz:/no/such.npz", DataOptions(), DataNotFoundError, "not found"),
    ("cifar10:extra", DataOptions(), ConfigError, "takes no argument"),
    ("nomodule_xyz:fn", DataOptions(), ConfigError, "cannot import"),
])
def test_bad_specs_say_what_is_wrong(spec, options, error, words):
    with pytest.raises(error, match=words):
        datasets.source(spec, options)


def test_bad_options_and_bad_files(tmp_path):
    for kw, words in (({"channels": 2}, "1 .grayscale. or 3"), ({"image_size": (0, 4)}, "positive"),
                      ({"std": (0.0,)}, "positive"), ({"val_fraction": 1.5}, r"in \(0, 1\)"),
                      ({"val_fraction": 0.5, "test_fraction": 0.45}, "at least 10%"),
                      ({"mean": (0.1, 0.2), "std": (0.1,)}, "one value per channel")):
        with pytest.raises(ConfigError, match=words):
            DataOptions(**kw)
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 5, 5), np.float32), labels=np.zeros(4, int))
    with pytest.raises(DataError, match="uint8"):
        datasets.source(f"npz:{tmp_path / 'bad.npz'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        datasets.source(f"imagefolder:{tmp_path / 'empty'}")
    spec = write_digits(tmp_path / "d", limit=40)
    with pytest.raises(ConfigError, match="2 values; the images have 1"):
        datasets.source(spec, DataOptions(mean=(0.1, 0.2), std=(1.0, 1.0)))
    (tmp_path / "d" / "3" / "0003.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read image"):
        datasets.source(spec, DataOptions(channels=1))
