"""Datasets: registry, tensors and ranges, splits, resizing, channels, subsets, batches, missing files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transfer.engine import data as data_mod
from transfer.engine import dataset_sources
from transfer.engine.data import (
    DatasetNotFoundError,
    TensorData,
    convert_channels,
    create_dataset,
    dataset_info,
    holdout_split,
    list_datasets,
    resize_images,
    stratified_indices,
)
from transfer.engine.shapes import SHAPE_CLASSES, generate_shapes


@pytest.fixture(scope="module")
def digits_train() -> TensorData:
    return create_dataset("digits", "train")


@pytest.fixture(scope="module")
def digits_test() -> TensorData:
    return create_dataset("digits", "test")


def test_registry_lists_every_dataset_and_info_needs_no_files() -> None:
    names = list_datasets()
    for name in ("cifar10", "cifar100", "svhn", "mnist", "fashion-mnist", "digits", "shapes"):
        assert name in names
    assert list_datasets("cifar*") == ["cifar10", "cifar100"]
    c100 = dataset_info("cifar100")
    assert (c100.num_classes, c100.in_chans, c100.image_size) == (100, 3, 32)
    assert len(set(c100.classes)) == 100
    assert dataset_info("fmnist").name == "fashion-mnist"
    for name in names:
        info = dataset_info(name)
        assert len(info.classes) == info.num_classes
    assert dataset_info("digits").offline and dataset_info("shapes").offline
    assert not dataset_info("cifar10").offline


def test_unknown_dataset_split_and_option_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*cifar10"):
        create_dataset("imagenet")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        create_dataset("digits", "val")
    with pytest.raises(ValueError, match="unknown option.*n_train"):
        create_dataset("digits", n_train=10)
    with pytest.raises(ValueError, match="in_chans must be 1 or 3"):
        create_dataset("digits", in_chans=2)


def test_digits_tensors_ranges_and_fixed_stratified_split(digits_train: TensorData, digits_test: TensorData) -> None:
    from sklearn.datasets import load_digits

    full = torch.as_tensor(load_digits().target)
    assert len(digits_train) + len(digits_test) == len(full)
    assert len(digits_test) == pytest.approx(0.25 * len(full), abs=1)
    for d in (digits_train, digits_test):
        assert d.images.dtype == torch.float32 and d.labels.dtype == torch.int64
        assert d.images.shape[1:] == (1, 16, 16) and d.info.image_size == 16 and d.info.in_chans == 1
        assert d.images.min() >= 0.0 and d.images.max() <= 1.0
    per_class = torch.bincount(full, minlength=10)
    test_counts = torch.bincount(digits_test.labels, minlength=10)
    assert torch.equal(torch.bincount(digits_train.labels, minlength=10) + test_counts, per_class)
    assert ((test_counts - 0.25 * per_class).abs() <= 1).all()
    again = create_dataset("digits", "test")
    assert torch.equal(again.images, digits_test.images) and torch.equal(again.labels, digits_test.labels)


def test_digits_native_size_keeps_the_sixteen_grey_levels() -> None:
    d = create_dataset("digits", "test", input_size=8)
    assert d.images.shape[-2:] == (8, 8)
    levels = torch.unique(d.images * 16)
    assert torch.allclose(levels, levels.round(), atol=1e-5) and levels.max() == 16


def test_resize_is_bilinear_antialiased_and_stays_in_range() -> None:
    const = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(resize_images(const, 5), torch.full((2, 3, 5, 5), 0.3), atol=1e-6)
    lines = torch.zeros(1, 1, 16, 16)
    lines[..., ::4] = 1.0
    # Antialiasing averages one line in four to ~0.25; plain bilinear would sample between the zeros.
    small = resize_images(lines, 4)
    assert ((small - 0.25).abs() < 0.1).all()
    big = resize_images(torch.rand(3, 1, 8, 8), 24)
    assert big.shape == (3, 1, 24, 24) and big.min() >= 0.0 and big.max() <= 1.0
    with pytest.raises(ValueError, match="input_size"):
        resize_images(const, 0)


def test_channel_conversion_both_ways() -> None:
    rgb = create_dataset("digits", "test", in_chans=3, input_size=8)
    assert rgb.images.shape[1] == 3 and rgb.info.in_chans == 3
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 1]) and torch.equal(rgb.images[:, 1], rgb.images[:, 2])
    colour = torch.rand(4, 3, 5, 5)
    gray = convert_channels(colour, 1)
    expected = 0.299 * colour[:, 0] + 0.587 * colour[:, 1] + 0.114 * colour[:, 2]
    assert gray.shape == (4, 1, 5, 5) and torch.allclose(gray[:, 0], expected, atol=1e-6)
    with pytest.raises(ValueError, match="between 1 and 3"):
        convert_channels(torch.rand(1, 2, 4, 4), 3)
    shapes_gray = create_dataset("shapes", "test", in_chans=1, n_test=20, input_size=8)
    assert shapes_gray.images.shape == (20, 1, 8, 8) and shapes_gray.info.in_chans == 1


def test_stratified_subset_keeps_proportions_and_is_seeded(digits_train: TensorData) -> None:
    sub = digits_train.subset(200, seed=3)
    assert len(sub) == 200
    full = torch.bincount(digits_train.labels, minlength=10).double()
    counts = torch.bincount(sub.labels, minlength=10).double()
    assert ((counts - 200 * full / full.sum()).abs() < 1).all()
    same = digits_train.subset(200, seed=3)
    other = digits_train.subset(200, seed=4)
    assert torch.equal(same.images, sub.images)
    assert not torch.equal(other.images, sub.images)
    via_factory = create_dataset("digits", "train", subset=200, seed=3)
    assert torch.equal(via_factory.labels, sub.labels)
    # Unbalanced labels: the rare class keeps its share.
    labels = torch.tensor([0] * 90 + [1] * 10)
    idx = stratified_indices(labels, 20, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [18, 2]
    assert torch.equal(idx, idx.sort().values) and len(idx.unique()) == 20
    with pytest.raises(ValueError, match="subset size"):
        digits_train.subset(len(digits_train) + 1)


@st.composite
def labels_and_size(draw: st.DrawFn) -> tuple[torch.Tensor, int, int]:
    """Labels of up to 6 classes (any sizes, some classes absent, labels in any order), a subset size, a seed."""
    label_list = draw(st.lists(st.integers(0, 5), min_size=1, max_size=80))
    n = draw(st.integers(1, len(label_list)))
    return torch.tensor(label_list), n, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=150, deadline=None)
@given(labels_and_size())
def test_stratified_indices_properties(case: tuple[torch.Tensor, int, int]) -> None:
    labels, n, seed = case
    idx = stratified_indices(labels, n, seed)
    assert len(idx) == n  # the size asked for
    assert len(idx.unique()) == n and torch.equal(idx, idx.sort().values)  # no duplicates, sorted
    assert int(idx.min()) >= 0 and int(idx.max()) < len(labels)
    # Every class gets its share rounded down or up (largest remainder), never further off.
    full = torch.bincount(labels, minlength=6).double()
    counts = torch.bincount(labels[idx], minlength=6).double()
    assert ((counts - n * full / len(labels)).abs() < 1).all()
    assert torch.equal(stratified_indices(labels, n, seed), idx)  # the seed decides, nothing else
    # The labels' order does not change which label counts are drawn.
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    assert torch.equal(torch.bincount(shuffled[stratified_indices(shuffled, n, seed)], minlength=6), counts.long())


@settings(max_examples=100, deadline=None)
@given(labels_and_size())
def test_holdout_split_is_a_disjoint_cover(case: tuple[torch.Tensor, int, int]) -> None:
    labels, n, seed = case
    rest, held = holdout_split(labels, n, seed)
    assert torch.equal(held, stratified_indices(labels, n, seed))
    assert len(rest) == len(labels) - n and torch.equal(rest, rest.sort().values)
    assert not set(rest.tolist()) & set(held.tolist())  # disjoint
    assert torch.equal(torch.cat([rest, held]).sort().values, torch.arange(len(labels)))  # together: everything


def test_batches_cover_every_sample_once(digits_test: TensorData) -> None:
    plain = list(digits_test.batches(100))
    assert [len(y) for _, y in plain][-1] == len(digits_test) % 100
    assert torch.equal(torch.cat([y for _, y in plain]), digits_test.labels)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    shuffled = list(digits_test.batches(64, shuffle=True, generator=g1))
    repeat = list(digits_test.batches(64, shuffle=True, generator=g2))
    ys = torch.cat([y for _, y in shuffled])
    assert not torch.equal(ys, digits_test.labels)
    assert torch.equal(ys.sort().values, digits_test.labels.sort().values)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(shuffled, repeat, strict=True))
    x0, y0 = shuffled[0]
    assert x0.shape == (64, 1, 16, 16) and y0.shape == (64,)
    with pytest.raises(ValueError, match="batch_size"):
        next(digits_test.batches(0))
    moved = digits_test.to("cpu")
    assert len(moved) == len(digits_test) and moved.info == digits_test.info


def test_tensordata_rejects_wrong_dtypes() -> None:
    info = dataset_info("digits")
    with pytest.raises(ValueError, match="float32"):
        TensorData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), info)
    with pytest.raises(ValueError, match="int64"):
        TensorData(torch.zeros(2, 1, 4, 4), torch.zeros(3, dtype=torch.int64), info)


def test_shapes_is_colour_balanced_seeded_and_sized() -> None:
    train = create_dataset("shapes", "train", n_train=200, input_size=16)
    test = create_dataset("shapes", "test", n_test=100, input_size=16)
    assert train.images.shape == (200, 3, 16, 16) and test.images.shape == (100, 3, 16, 16)
    assert train.info.classes == SHAPE_CLASSES and train.info.image_size == 16
    assert torch.bincount(train.labels, minlength=10).tolist() == [20] * 10
    assert train.images.min() >= 0.0 and train.images.max() <= 1.0
    assert (train.images[:, 0] - train.images[:, 1]).abs().mean() > 0.05  # colour, not grey
    again = create_dataset("shapes", "train", n_train=200, input_size=16)
    assert torch.equal(again.images, train.images)
    first_test = test.images[: len(test)]
    assert not torch.equal(first_test, train.images[: len(test)])
    reseeded = create_dataset("shapes", "train", n_train=200, input_size=16, generation_seed=1)
    assert not torch.equal(reseeded.images, train.images)
    assert create_dataset("shapes", "test").images.shape == (500, 3, 32, 32)


def test_shapes_classes_differ_in_their_mean_images() -> None:
    x, y = generate_shapes(500, size=16, seed=0, noise=0.0)
    # Foreground coverage per class (pixels differing from the corner background) separates the classes.
    bg = x[:, :, :1, :1]
    cover = ((x - bg).abs().sum(dim=1) > 1e-3).float().mean(dim=(1, 2))
    means = torch.stack([cover[y == c].mean() for c in range(10)])
    assert means.min() > 0.02 and len(torch.unique((means * 100).round())) >= 6
    with pytest.raises(ValueError, match="size"):
        generate_shapes(10, size=2)


def test_missing_cifar10_names_directory_and_command(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        create_dataset("cifar10", data_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg
    assert f"sparta train --dataset cifar10 --data-dir {tmp_path} --download" in msg
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(DatasetNotFoundError, match="svhn"):
        create_dataset("svhn", "test", data_dir=tmp_path)


def test_default_data_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARTA_DATA_DIR", str(tmp_path / "store"))
    assert data_mod.default_data_dir() == tmp_path / "store"
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path / "store"))):
        create_dataset("mnist")
    monkeypatch.setenv("SPARTA_DATA_DIR", "")  # e.g. SPARTA_DATA_DIR=$UNSET_VARIABLE in a job script
    with pytest.raises(ValueError, match="SPARTA_DATA_DIR is set but empty"):
        create_dataset("mnist")
    monkeypatch.delenv("SPARTA_DATA_DIR")
    assert data_mod.default_data_dir().name == "datasets"  # unset: the user cache default


needs_debian_fmnist = pytest.mark.skipif(
    not (dataset_sources.DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian's fashion-mnist package is not installed (/usr/share/datasets/fashion-mnist)",
)


@needs_debian_fmnist
def test_fashion_mnist_from_debian_files_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    calls: list[dict] = []
    real = torchvision.datasets.FashionMNIST

    def spy_init(self: object, **kwargs: object) -> None:
        calls.append(kwargs)
        real.__init__(self, **kwargs)

    # Same class name: torchvision derives the folder (ROOT/FashionMNIST/raw) from it.
    spy = type("FashionMNIST", (real,), {"__init__": spy_init})
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", spy)
    d = create_dataset("fashion-mnist", "test", data_dir=tmp_path, subset=500)
    assert calls and calls[0]["root"] == str(tmp_path) and calls[0]["train"] is False
    raw = tmp_path / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(dataset_sources.FashionMNIST.files)
    assert d.images.shape == (500, 1, 28, 28) and d.info.classes[0] == "T-shirt/top"
    assert torch.bincount(d.labels).tolist() == [50] * 10  # the test split has 1,000 per class
    assert d.images.min() >= 0.0 and d.images.max() == 1.0
    assert "FashionMNIST" in d.info.source


@needs_debian_fmnist
def test_fashion_mnist_unwritable_data_dir_falls_back_to_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("SPARTA_DATA_DIR", str(tmp_path / "cache"))
    d = create_dataset("fashion-mnist", "test", data_dir=blocker, subset=100)
    assert len(d) == 100
    assert (tmp_path / "cache" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    assert str(tmp_path / "cache") in d.info.source
