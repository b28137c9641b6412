"""load_per_image checks a per-image file before it unpacks anything: a damaged or forged file is a
clear ValueError, never a wrong p-value or a huge allocation."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from transfer.engine.per_image import PerImage, load_per_image, save_per_image

FORMAT = "sparta-per-image-v1"


def _write(path, tensors, **metadata):
    save_file(tensors, str(path), metadata={"format": FORMAT, "n": "10", "fingerprint": "0123abcd", **metadata})
    return path


def test_a_file_it_wrote_reads_back(tmp_path):
    bits = PerImage({"clean": np.arange(10) % 2 == 0, "pgd20": np.zeros(10, bool)}, "0123abcd")
    back = load_per_image(save_per_image(tmp_path / "p.safetensors", bits))
    assert back.n == 10 and back.fingerprint == "0123abcd"
    assert all(np.array_equal(back[m], bits[m]) for m in bits)


@pytest.mark.parametrize(("tensors", "metadata", "message"), [
    ({"clean": np.full(2, np.nan, np.float32)}, {}, r"tensor 'clean' is F32 \[2\], not the uint8 \[2\]"),
    ({"clean": np.zeros((2, 1), np.uint8)}, {}, r"tensor 'clean' is U8 \[2, 1\]"),
    ({"clean": np.zeros(3, np.uint8)}, {}, r"tensor 'clean' is U8 \[3\], not the uint8 \[2\] .* n=10"),
    ({"clean": np.zeros(2, np.uint8)}, {"n": str(10**11)}, "image count n='100000000000' is not a whole number"),
    ({"clean": np.zeros(2, np.uint8)}, {"n": "-3"}, "image count"),
    ({"clean": np.zeros(2, np.uint8)}, {"n": "١٠"}, "image count"),  # digits, but not ASCII ones
    ({"clean": np.zeros(2, np.uint8)}, {"fingerprint": "<script>"}, "fingerprint '<script>' is not a hex string"),
    ({"clean": np.zeros(2, np.uint8)}, {"format": "other"}, "not a per-image correctness file"),
])  # fmt: skip
def test_a_damaged_or_forged_file_is_a_clear_error(tmp_path, tensors, metadata, message):
    path = _write(tmp_path / "p.safetensors", tensors, **metadata)
    with pytest.raises(ValueError, match=message) as info:
        load_per_image(path)
    assert str(path) in str(info.value)


def test_a_claimed_count_is_checked_before_any_bits_are_allocated(tmp_path, monkeypatch):
    path = _write(tmp_path / "p.safetensors", {"clean": np.zeros(2, np.uint8)}, n=str(10**11))

    def unpack(*args, **kwargs):
        raise AssertionError("unpacked before the header was checked")

    monkeypatch.setattr(np, "unpackbits", unpack)
    with pytest.raises(ValueError, match="at most 1,000,000,000"):
        load_per_image(path)
