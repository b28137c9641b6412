"""Nothing bad gets into the zoo: card format 2 (site layouts, a checksummed site table, the upgrade of
format-1 cards), non-finite or unregistered activation sets refused everywhere, one-line errors."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import sparta_cli, sparta_model
from safetensors.torch import save_file

from transfer import create_backbone, extract, find_sites, load_activation_set, save_activation_set
from transfer.activation_set import activation_set_to_header
from zoo import CARD_SCHEMA, IntegrityError, Registry, ZooError
from zoo.card import upgrade_card

BUNDLED = "digits-resnet18-sparta-dw"


@pytest.fixture(scope="module")
def aset():
    return extract(sparta_model(width=4, input_size=8), meta={"arch": "resnet18", "dataset": "digits"})


def _one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---- format 2, the upgrade of format-1 cards, the bundled entry ---------------------------------------


@pytest.mark.bundled_zoo
def test_the_bundled_entry_survives_its_own_round_trip(tmp_path, capsys):
    exported = tmp_path / "F.safetensors"
    assert sparta_cli(capsys, "zoo", "export", BUNDLED, str(exported))[0] == 0
    rc, out, err = sparta_cli(capsys, "zoo", "import", str(exported), "--name", "good")
    assert (rc, out) == (0, "good@1\n"), err
    registry = Registry()
    assert registry.info("good")["schema"] == CARD_SCHEMA == "sparta-zoo-card/2"
    a, b = registry.load(BUNDLED), registry.load("good")
    size, width = a.meta["input_size"], a.meta["width"]
    model = create_backbone("resnet18", 10, in_chans=1, input_size=size, width=width)
    assert a.sites == b.sites == find_sites(model, (1, size, size))  # layouts and all, as traced today
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_a_format_1_card_is_read_by_the_documented_upgrade(tmp_path, aset):
    registry = Registry(tmp_path, bundled_root=None)
    ref = registry.save("old", aset)
    card_path = ref.path / "card.json"
    card = json.loads(card_path.read_text())
    v1 = {k: v for k, v in card.items() if k not in ("sites_sha256", "threat_model")}
    v1.update(schema="sparta-zoo-card/1", sites=[{k: v for k, v in s.items() if k != "layout"} for s in card["sites"]])
    card_path.write_text(json.dumps(v1))
    upgraded = upgrade_card(v1)
    assert upgraded["schema"] == "sparta-zoo-card/2" and upgraded["threat_model"] is None
    assert all(s["layout"] == "NCHW" for s in upgraded["sites"])
    assert upgraded["sites_sha256"] == card["sites_sha256"]
    assert registry.info("old")["schema"] == "sparta-zoo-card/2"
    assert registry.load("old").sites == aset.sites
    registry.export("old", tmp_path / "old.safetensors")
    assert str(registry.import_file(tmp_path / "old.safetensors", name="new")) == "new@1"


def test_an_unknown_card_format_is_refused_with_what_to_do(tmp_path, aset):
    registry = Registry(tmp_path, bundled_root=None)
    ref = registry.save("x", aset)
    card = json.loads((ref.path / "card.json").read_text())
    (ref.path / "card.json").write_text(json.dumps({**card, "schema": "sparta-zoo-card/9"}))
    with pytest.raises(ZooError, match=r"sparta-zoo-card/9.*upgrade sparta-transfer"):
        registry.load("x")


# ---- the site table is covered -------------------------------------------------------------------------


def _edit_sites(ref, edit) -> None:
    path = ref.path / "card.json"
    card = json.loads(path.read_text())
    edit(card["sites"])
    path.write_text(json.dumps(card, indent=2))


def _channels_999(sites):
    sites[3]["channels"] = 999


def _swap_depths(sites):
    sites[0]["relative_depth"], sites[-1]["relative_depth"] = sites[-1]["relative_depth"], sites[0]["relative_depth"]


def _swap_layout(sites):
    sites[2]["layout"] = "NHWC"


@pytest.mark.parametrize("edit", [_channels_999, _swap_depths, _swap_layout])
def test_a_hand_edited_site_table_is_refused_on_load(tmp_path, aset, edit, capsys):
    registry = Registry(tmp_path, bundled_root=None)
    ref = registry.save("x", aset)
    _edit_sites(ref, edit)
    with pytest.raises(IntegrityError, match="site table"):
        registry.load("x")
    rc, _, err = sparta_cli(capsys, "zoo", "export", "x", str(tmp_path / "x.safetensors"), "--root", str(tmp_path))
    _one_line_error(rc, err, "site table")


@pytest.mark.parametrize("edit", [_channels_999, _swap_depths])
def test_a_site_table_that_does_not_fit_the_tensors_is_refused_even_with_a_fresh_checksum(tmp_path, aset, edit):
    registry = Registry(tmp_path, bundled_root=None)
    ref = registry.save("x", aset)
    path = ref.path / "card.json"
    card = json.loads(path.read_text())
    edit(card["sites"])
    card = {k: v for k, v in card.items() if k != "sites_sha256"}
    card["schema"] = "sparta-zoo-card/1"  # a format-1 card: its site table was never checksummed
    path.write_text(json.dumps(card))
    with pytest.raises(ZooError, match=r"site|depth"):
        registry.load("x")


# ---- activation sets: non-finite tensors, unregistered names -------------------------------------------


def _poisoned(aset, value=math.nan):
    key = sorted(aset.tensors)[5]
    tensors = dict(aset.tensors)
    tensors[key] = tensors[key].clone().flatten().index_fill(0, torch.tensor([0]), value).view_as(tensors[key])
    return dataclasses.replace(aset, tensors=tensors), key


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_activation_sets_are_never_saved_stored_or_imported(tmp_path, aset, value, capsys):
    bad, key = _poisoned(aset, value)
    with pytest.raises(ValueError, match=f"{key}.*non-finite"):
        save_activation_set(bad, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
    with pytest.raises(ValueError, match=key):
        Registry(tmp_path / "zoo", bundled_root=None).save("bad", bad)
    path = tmp_path / "written-elsewhere.safetensors"  # e.g. by an older toolkit
    save_file({k: v.contiguous() for k, v in bad.tensors.items()}, str(path), metadata=activation_set_to_header(bad))
    with pytest.raises(ValueError, match=key):
        load_activation_set(path)
    rc, _, err = sparta_cli(capsys, "zoo", "import", str(path), "--name", "bad", "--root", str(tmp_path / "zoo"))
    _one_line_error(rc, err, key, "non-finite")
    assert not (tmp_path / "zoo" / "bad").exists()


def test_a_model_with_a_non_finite_activation_parameter_is_not_extracted():
    model = sparta_model(width=4, input_size=8)
    with torch.no_grad():
        model.layer1[0].act2.bias[1] = math.inf
    with pytest.raises(ValueError, match=r"layer1.0.act2/bias.*non-finite"):
        extract(model)


def test_an_activation_set_naming_an_unregistered_activation_is_refused(tmp_path, aset, capsys):
    bad = dataclasses.replace(aset, activation="not-an-activation")
    with pytest.raises(ValueError, match="not-an-activation"):
        save_activation_set(bad, tmp_path / "bad.safetensors")
    path = tmp_path / "foreign.safetensors"
    save_file(dict(bad.tensors), str(path), metadata=activation_set_to_header(bad))
    rc, _, err = sparta_cli(capsys, "zoo", "import", str(path), "--root", str(tmp_path / "zoo"))
    _one_line_error(rc, err, "not-an-activation")
    bad_config = dataclasses.replace(aset, config={**aset.config, "kernel_size": "seven"})
    with pytest.raises(ValueError):
        Registry(tmp_path / "zoo", bundled_root=None).save("bad", bad_config)


def test_tensors_that_do_not_fit_their_site_are_refused(tmp_path, aset):
    key = sorted(aset.tensors)[0]
    tensors = {**aset.tensors, key: torch.zeros(3, 1, 3, 3)}
    with pytest.raises(ValueError, match=f"site '{key.rpartition('/')[0]}'.*do not fit"):
        save_activation_set(dataclasses.replace(aset, tensors=tensors), tmp_path / "x.safetensors")


# ---- export and import: one-line errors ----------------------------------------------------------------


def test_export_into_a_missing_directory_is_an_error_like_cp(tmp_path, aset, capsys):
    Registry(tmp_path, bundled_root=None).save("x", aset)
    target = tmp_path / "missing" / "dir"
    rc, _, err = sparta_cli(capsys, "zoo", "export", "x", f"{target}/", "--root", str(tmp_path))
    _one_line_error(rc, err, "missing/dir", "does not exist")
    assert not (tmp_path / "missing").exists()
    rc, _, err = sparta_cli(
        capsys, "zoo", "export", "x", str(tmp_path / "nowhere" / "x.safetensors"), "--root", str(tmp_path)
    )
    _one_line_error(rc, err, "nowhere", "does not exist")
    (tmp_path / "out").mkdir()
    rc, out, _ = sparta_cli(capsys, "zoo", "export", "x", f"{tmp_path / 'out'}/", "--root", str(tmp_path))
    assert rc == 0 and Path(out.strip()) == tmp_path / "out" / "x-v1.safetensors"


@pytest.mark.parametrize("key", ["sparta.config", "sparta.meta", "sparta.sites"])
@pytest.mark.parametrize("value", ["[1, 2]", "3", '"text"', "null"])
def test_an_import_header_of_valid_json_that_is_not_the_right_shape_is_one_line(tmp_path, aset, key, value, capsys):
    header = {**activation_set_to_header(aset), key: value}
    path = tmp_path / "odd.safetensors"
    save_file(dict(aset.tensors), str(path), metadata=header)
    with pytest.raises(ValueError, match=key):
        load_activation_set(path)
    rc, _, err = sparta_cli(capsys, "zoo", "import", str(path), "--name", "odd", "--root", str(tmp_path / "zoo"))
    _one_line_error(rc, err, key)


def test_an_embedded_card_of_valid_json_that_is_not_an_object_is_one_line(tmp_path, aset, capsys):
    header = {**activation_set_to_header(aset), "sparta.zoo.card": "[]"}
    path = tmp_path / "odd.safetensors"
    save_file(dict(aset.tensors), str(path), metadata=header)
    rc, _, err = sparta_cli(capsys, "zoo", "import", str(path), "--root", str(tmp_path / "zoo"))
    _one_line_error(rc, err, "card")


def test_zoo_list_prints_each_broken_entry_as_one_line(tmp_path, aset, capsys):
    registry = Registry(tmp_path, bundled_root=None)
    registry.save("good", aset)
    bad = registry.save("broken", aset)
    (bad.path / "card.json").write_text("{not json")
    rc, out, err = sparta_cli(capsys, "zoo", "list", "--root", str(tmp_path))
    assert rc == 0 and "good@1" in out and "broken@1" not in out
    assert "Warning" not in err and "warn" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparta zoo list: skipping broken@1:"), err
    rc, out, err = sparta_cli(capsys, "zoo", "list", "--root", str(tmp_path), "--json")
    assert rc == 0 and [r["ref"] for r in json.loads(out)] == ["good@1"]
    assert len(err.strip().splitlines()) == 1
