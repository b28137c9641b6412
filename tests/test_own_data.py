"""A researcher's own data: ``folder:PATH`` and ``npz:PATH`` datasets, their fingerprints, and the threat model
a dataset without one must be given (``eps``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_config
from PIL import Image

from transfer.cli import main
from transfer.engine.config import TrainConfig
from transfer.engine.data import DatasetNotFoundError, create_dataset, dataset_info
from transfer.engine.run_inputs import DatasetChangedError, load_data, resolve_config
from transfer.engine.training import train

CLASSES = ("cat", "dog", "owl")


def write_folder(root: Path, splits: dict[str, int], mode: str = "RGB", size: int = 8, seed: int = 0) -> Path:
    """An ImageFolder tree: ``n`` PNGs per class in each split; class c's images are brighter with c."""
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (size, size, 3) if mode == "RGB" else (size, size)
                pixels = np.clip(rng.normal(60 + 70 * c, 10, shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode=mode).save(root / split / name / f"{i}.png")
    return root


def write_npz(path: Path, **overrides: np.ndarray) -> Path:
    rng = np.random.default_rng(1)
    arrays = {
        "x_train": rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8), "y_train": np.arange(30) % 3,
        "x_test": rng.random((9, 8, 8, 3)).astype(np.float32), "y_test": np.arange(9) % 3,
    }  # fmt: skip
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "pets", {"train": 10, "test": 3})


def test_a_folder_is_a_dataset_with_its_classes_size_and_channels(folder):
    name = f"folder:{folder}"
    info = dataset_info(name)
    assert (info.name, info.classes, info.num_classes, info.in_chans, info.image_size) == (name, CLASSES, 3, 3, 8)
    assert info.threat_model is None and info.splits == ("train", "test") and len(info.fingerprint) == 64
    assert info.to_dict()["threat_model"] is None and info.to_dict()["fingerprint"] == info.fingerprint
    test = create_dataset(name, "test")
    assert test.images.shape == (9, 3, 8, 8) and test.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    means = [test.images[test.labels == c].mean().item() for c in range(3)]
    assert means == sorted(means) and test.images.min() >= 0 and test.images.max() <= 1  # labels follow folders
    grey = create_dataset(name, "train", in_chans=1, input_size=16, subset=6)
    assert grey.images.shape == (6, 1, 16, 16) and grey.info.fingerprint == info.fingerprint


def test_greyscale_folders_have_one_channel(tmp_path):
    root = write_folder(tmp_path / "g", {"train": 2, "test": 1}, mode="L", size=6)
    assert dataset_info(f"folder:{root}").in_chans == 1
    assert create_dataset(f"folder:{root}", "train").images.shape == (6, 1, 6, 6)


@pytest.mark.parametrize(("breakage", "message"), [
    (lambda r: Image.new("RGB", (12, 12)).save(r / "train/cat/big.png"), r"images differ: .* 8×8 .* 12×12"),
    (lambda r: Image.new("L", (8, 8)).save(r / "test/dog/grey.png"), r"images differ: .*3 channels.*1 channel"),
    (lambda r: Image.new("RGBA", (8, 8)).save(r / "train/owl/alpha.png"), r"image mode 'RGBA'"),
    (lambda r: (r / "test/fox").mkdir() or Image.new("RGB", (8, 8)).save(r / "test/fox/0.png"),
     r"test/ has class folder\(s\) \['fox'\] that train/ lacks"),
    (lambda r: (r / "train/emu").mkdir(), r"class folder\(s\) \['emu'\] .* hold no images"),
    (lambda r: (r / "train/cat/broken.png").write_bytes(b"not a png"), r"broken.png is not a readable image"),
])  # fmt: skip
def test_a_folder_that_does_not_agree_is_a_clear_error(folder, breakage, message):
    breakage(folder)
    with pytest.raises(ValueError, match=message):
        dataset_info(f"folder:{folder}")


def test_missing_folders_and_files_name_the_layout(tmp_path, folder):
    with pytest.raises(DatasetNotFoundError, match="no such directory .*PATH/train/<class>"):
        dataset_info(f"folder:{tmp_path / 'nothing'}")
    (folder / "test").rename(folder / "testing")
    with pytest.raises(DatasetNotFoundError, match="test is missing"):
        dataset_info(f"folder:{folder}")
    with pytest.raises(DatasetNotFoundError, match="no such file .*x_train"):
        dataset_info(f"npz:{tmp_path / 'none.npz'}")
    with pytest.raises(ValueError, match="needs a path after the colon"):
        dataset_info("npz:")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*folder:PATH"):
        dataset_info("imagenet")


def test_the_fingerprint_follows_the_files(folder):
    name = f"folder:{folder}"
    before = dataset_info(name).fingerprint
    assert dataset_info(name).fingerprint == before  # stable
    (folder / "train/cat/0.png").rename(folder / "train/cat/renamed.png")
    renamed = dataset_info(name).fingerprint
    assert renamed != before
    Image.new("RGB", (8, 8), "white").save(folder / "train/cat/renamed.png")  # same name, new content
    assert dataset_info(name).fingerprint not in (before, renamed)


def test_an_npz_file_is_a_dataset(tmp_path):
    path = write_npz(tmp_path / "mine.npz", classes=np.array(["a", "b", "c"]))
    info = dataset_info(f"npz:{path}")
    assert (info.classes, info.in_chans, info.image_size, info.splits) == (("a", "b", "c"), 3, 8, ("train", "test"))
    train_split, test_split = create_dataset(f"npz:{path}", "train"), create_dataset(f"npz:{path}", "test")
    x = np.load(path)["x_train"]
    assert torch.allclose(train_split.images, torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)
    assert test_split.images.dtype == torch.float32 and test_split.labels.tolist() == [0, 1, 2] * 3
    fingerprint = info.fingerprint
    write_npz(path, classes=np.array(["a", "b", "c"]), y_test=np.arange(9)[::-1] % 3)
    assert dataset_info(f"npz:{path}").fingerprint != fingerprint  # the contents changed


@pytest.mark.parametrize(("arrays", "message"), [
    ({"y_test": None}, r"arrays \['y_test'\] missing"),
    ({"x_test": np.zeros((9, 3, 8, 8), np.uint8)}, r"channels first.*transpose\(0, 2, 3, 1\)"),
    ({"x_test": np.full((9, 8, 8, 3), 2.0, np.float32)}, r"values outside \[0, 1\]"),
    ({"x_test": np.zeros((9, 8, 8, 3), np.int32)}, r"x_test is int32; images are uint8"),
    ({"x_test": np.zeros((9, 6, 6, 3), np.uint8)}, r"splits' images differ in shape"),
    ({"x_train": np.zeros((30, 8, 6), np.uint8), "x_test": np.zeros((9, 8, 6), np.uint8)}, r"8×6 \(H×W\).*square"),
    ({"y_train": np.arange(30) - 1}, r"y_train holds a negative label"),
    ({"y_train": np.arange(29)}, r"y_train must be integer class indices of shape \(30,\)"),
    ({"y_train": np.arange(30) * 0.5}, r"y_train must be integer class indices"),
    ({"classes": np.array(["a", "b"])}, r"a label is 2, but classes names 2 classes"),
    ({"classes": np.array([{"a": 1}], dtype=object)}, r"holds Python objects, which are never unpickled"),
])  # fmt: skip
def test_npz_arrays_are_validated(tmp_path, arrays, message):
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        dataset_info(f"npz:{path}")


def test_a_dataset_without_a_threat_model_needs_eps_with_documented_defaults(folder):
    name = f"folder:{folder}"
    with pytest.raises(ValueError, match=r"declares no threat model.*--eps .*\[train\].*TrainConfig\(eps=") as err:
        TrainConfig(dataset=name).with_threat_model()
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="declares no threat model"):
        resolve_config(TrainConfig(dataset=name))
    given = TrainConfig(dataset=name, eps=0.04).with_threat_model()
    assert (given.eps, given.steps) == (0.04, 10) and given.alpha == pytest.approx(2.5 * 0.04 / 10)
    own = TrainConfig(dataset=name, eps=0.04, steps=4, alpha=0.02).with_threat_model()
    assert (own.steps, own.alpha) == (4, 0.02)
    assert TrainConfig(dataset=name, eps=0.04, steps=5).with_threat_model().alpha == pytest.approx(0.02)
    assert TrainConfig(dataset="cifar10").with_threat_model().eps == 8 / 255  # built-ins keep theirs


def test_the_cli_refuses_a_run_without_eps_in_one_line(folder, tmp_path, capsys):
    code = main(["train", "--dataset", f"folder:{folder}", "--out", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "set eps (--eps 8/255" in err
    assert not (tmp_path / "run").exists()


def _tiny(dataset: str, **changes) -> TrainConfig:
    """``tiny_config`` on ``dataset`` at its own size and subsets (no input_size or subsets given), an fgsm-rs
    run at ε 8/255 in batches of 8, evaluated clean and under FGSM."""
    fields = dict(input_size=None, train_subset=None, test_subset=None, batch_size=8, eps=8 / 255)
    return tiny_config(dataset=dataset, recipe="fgsm-rs", eval_attacks=("clean", "fgsm"), **{**fields, **changes})


def test_a_run_records_the_fingerprint_and_refuses_to_resume_on_changed_files(folder, tmp_path):
    name, out = f"folder:{folder}", tmp_path / "run"
    metrics = train(_tiny(name), out, progress=False)
    fingerprint = dataset_info(name).fingerprint
    assert json.loads((out / "config.json").read_text())["dataset_fingerprint"] == fingerprint
    assert metrics["dataset_fingerprint"] == fingerprint
    Image.new("RGB", (8, 8)).save(folder / "train/dog/new.png")
    with pytest.raises(DatasetChangedError, match=rf"trained on dataset '{name}' as it was then.*another --out"):
        train(_tiny(name, epochs=2), out, progress=False)
    with pytest.raises(DatasetChangedError, match=rf"dataset '{name}' changed since"):  # a study job planned before
        resolve_config(_tiny(name, dataset_fingerprint=fingerprint))
    assert main(["eval", str(out), "--device", "cpu", "--no-progress"]) == 2  # the test images may have changed too


def test_a_val_folder_is_the_validation_split(tmp_path):
    root = write_folder(tmp_path / "v", {"train": 6, "val": 2, "test": 2})
    config = resolve_config(_tiny(f"folder:{root}", val_subset=4))
    train_split, val, _ = load_data(config)
    assert len(train_split) == 18 and len(val) == 4  # none held out of train; val cut to val_subset
    assert val.info.source.endswith("val")
    assert load_data(resolve_config(_tiny(f"folder:{root}", val_subset=0)))[1] is None


def test_own_data_through_the_cli_end_to_end(tmp_path, capsys):
    path = write_npz(tmp_path / "mine.npz")
    out = tmp_path / "run"
    argv = [
        "train",
        "--dataset",
        f"npz:{path}",
        "--eps",
        "4/255",
        "--arch",
        "resnet18",
        "--width",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--val-subset",
        "0",
        "--recipe",
        "fgsm-rs",
        "--attacks",
        "clean,fgsm",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
        "--json",
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"]["threat_model"]["train_eps"] == pytest.approx(4 / 255)
    assert result["metrics"]["threat_model"]["steps"] == 10
    assert main(["eval", str(out), "--attacks", "fgsm", "--device", "cpu", "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 9
