import builtins
import dataclasses
import hashlib
import json
import multiprocessing as mp
import pickle
from datetime import datetime
from pathlib import Path

import pytest
import torch
import yaml
from helpers import sparta_model
from platformdirs import user_cache_dir
from safetensors import safe_open

import transfer
import zoo
from transfer import create_backbone, extract, inject, load_activation_set, save_activation_set
from zoo import EntryNotFoundError, IntegrityError, InvalidNameError, Registry, ZooError

RUN_META = {
    "arch": "resnet18",
    "dataset": "digits",
    "recipe": {"attack": "pgd", "eps": 8 / 255, "steps": 10},
    "metrics": {"clean": 91.25, "pgd20": 40.5},
    "input_size": 16,
    "width": 4,
    "seed": 0,
    "train_config": {"epochs": 1, "lr": 0.1, "batch_size": 32},
}


def _tiny(arch="resnet18"):
    return create_backbone(arch, 10, input_size=16, width=4)


def _sparta_model(arch="resnet18", variant="dw", seed=0):
    return sparta_model(arch, variant, seed, width=4)


@pytest.fixture(scope="module")
def dw_set():
    return extract(_sparta_model(), meta=dict(RUN_META))


@pytest.fixture(scope="module")
def portable_set():
    return extract(_sparta_model(variant="portable", seed=1), meta={**RUN_META, "dataset": "fashion-mnist"})


def _variant(aset, seed, **meta):
    """The same set with other tensor values (and meta), without building a model."""
    g = torch.Generator().manual_seed(seed)
    tensors = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in aset.tensors.items()}
    return dataclasses.replace(aset, tensors=tensors, meta={**aset.meta, **meta})


def _same_tensors(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def reg(tmp_path):
    return Registry(tmp_path / "zoo", bundled_root=None)


def test_save_load_round_trip_and_card(reg, dw_set):
    ref = reg.save("digits-r18", dw_set)
    assert (str(ref), ref.version, ref.origin) == ("digits-r18@1", 1, "user")
    assert ref.path == reg.root / "digits-r18" / "1"
    loaded = reg.load("digits-r18")
    assert _same_tensors(loaded.tensors, dw_set.tensors)
    assert (loaded.activation, loaded.config, loaded.sites) == (dw_set.activation, dw_set.config, dw_set.sites)
    assert loaded.meta == json.loads(json.dumps(RUN_META))
    assert loaded.source == "zoo:digits-r18@1"

    card = json.loads((ref.path / "card.json").read_text())
    assert card == reg.info("digits-r18")
    assert card["schema"] == zoo.CARD_SCHEMA
    assert (card["activation"], card["variant"], card["config"]) == ("sparta", "dw", dw_set.config)
    assert card["sites"] == [s.to_dict() for s in dw_set.sites]
    assert (card["arch"], card["dataset"], card["recipe"]) == ("resnet18", "digits", RUN_META["recipe"])
    assert card["metrics"] == RUN_META["metrics"] and card["train_config"] == RUN_META["train_config"]
    assert card["toolkit_version"] == transfer.__version__
    assert datetime.fromisoformat(card["created"]).tzinfo is not None
    assert card["derived_from"] is None
    tensor_file = ref.path / "activation.safetensors"
    assert card["sha256"] == hashlib.sha256(tensor_file.read_bytes()).hexdigest()
    assert card["num_parameters"] == dw_set.num_parameters and card["num_sites"] == len(dw_set.sites)
    with safe_open(str(tensor_file), framework="pt") as f:  # tensors only
        assert not f.metadata()
        assert set(f.keys()) == set(dw_set.tensors)


def test_versions_count_up_and_latest_resolves_to_the_newest(reg, dw_set):
    sets = [_variant(dw_set, seed) for seed in range(3)]
    assert [reg.save("r18", s).version for s in sets] == [1, 2, 3]
    for version, s in zip([1, 2, 3], sets, strict=True):
        assert _same_tensors(reg.load("r18", version).tensors, s.tensors)
        assert _same_tensors(reg.load(f"r18@{version}").tensors, s.tensors)
    for latest in (reg.load("r18"), reg.load("r18", "latest"), reg.load("r18@latest")):
        assert _same_tensors(latest.tensors, sets[2].tensors)
        assert latest.source == "zoo:r18@3"
    assert list(reg.versions("r18")) == [1, 2, 3]
    with pytest.raises(EntryNotFoundError, match="stored versions: 1, 2, 3"):
        reg.load("r18", 9)
    with pytest.raises(ZooError, match="names version 1"):
        reg.load("r18@1", version=2)
    with pytest.raises(EntryNotFoundError, match="no zoo entry named 'r19'"):
        reg.load("r19")
    for bad in (0, "0", "first", True):
        with pytest.raises(InvalidNameError, match="version"):
            reg.load("r18", bad)


@pytest.mark.parametrize("bad", ["a/b", "..", "Upper", "", "-x", ".hidden", "a b", "x" * 101])
def test_bad_names_are_refused_and_nothing_is_written(reg, dw_set, bad):
    with pytest.raises(InvalidNameError, match="lower-case letters") as err:
        reg.save(bad, dw_set)
    if bad == "Upper":
        assert "'upper'" in str(err.value)
    with pytest.raises(InvalidNameError):
        reg.load(bad)
    assert not reg.root.exists() or not [p for p in reg.root.rglob("*") if p.is_file() and "locks" not in str(p)]


def test_card_fields_merge_over_meta_and_computed_fields_are_refused(reg, dw_set):
    extra = {"dataset": "digits-8x8", "metrics": {"clean": 88.0}, "description": "a test entry", "tags": ["tiny"]}
    reg.save("merged", dw_set, card=extra)
    card = reg.info("merged")
    assert (card["dataset"], card["metrics"], card["description"], card["tags"]) == (
        "digits-8x8",
        {"clean": 88.0},
        "a test entry",
        ["tiny"],
    )
    assert card["arch"] == "resnet18"  # still derived from meta
    assert reg.load("merged").meta["dataset"] == "digits-8x8"  # the loaded set agrees with its card
    for field in ("sha256", "version", "activation", "sites"):
        with pytest.raises(ZooError, match="computed"):
            reg.save("merged", dw_set, card={field: "x"})
    with pytest.raises(ZooError, match="tags"):
        reg.save("merged", dw_set, card={"tags": "tiny"})
    with pytest.raises(ZooError, match="description"):
        reg.save("merged", dw_set, card={"description": 3})
    assert list(reg.versions("merged")) == [1]


def test_saving_a_loaded_entry_records_where_it_came_from(reg, dw_set):
    reg.save("parent", dw_set)
    child = reg.load("parent")
    ref = reg.save("child", child)
    assert reg.info("child")["derived_from"] == "parent@1"
    assert "Derived from the zoo entry `parent@1`" in (ref.path / "README.md").read_text()


def test_readme_is_a_model_card_with_yaml_front_matter(reg, dw_set):
    ref = reg.save("digits-r18", dw_set)
    text = (ref.path / "README.md").read_text()
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    meta = yaml.safe_load(front)
    assert {"sparta", "sparta-dw", "resnet18"} <= set(meta["tags"])
    assert meta["license"] == "apache-2.0"
    assert meta["datasets"] == ["digits"] and meta["metrics"] == ["accuracy"]
    assert 'transfer.inject(model, zoo.Registry().load("digits-r18"), policy="stage", freeze=True)' in body
    assert "| clean | 91.25 |" in body and "| pgd20 | 40.5 |" in body
    assert reg.info("digits-r18")["sha256"] in body


def test_export_then_import_into_another_root_is_identical(tmp_path, reg, dw_set):
    reg.save("digits-r18", dw_set, card={"description": "exported", "tags": ["t"]})
    out = reg.export("digits-r18", tmp_path / "out.safetensors")
    # one self-describing file: a plain activation set to transfer, with the card in its header
    assert _same_tensors(load_activation_set(out).tensors, dw_set.tensors)
    with safe_open(str(out), framework="pt") as f:
        assert json.loads(f.metadata()[zoo.EXPORT_CARD_KEY]) == reg.info("digits-r18")
    with pytest.raises(ZooError, match="exists"):
        reg.export("digits-r18", out)
    assert reg.export("digits-r18", tmp_path).name == "digits-r18-v1.safetensors"

    other = Registry(tmp_path / "other", bundled_root=None)
    ref = other.import_file(out)
    assert str(ref) == "digits-r18@1"
    assert other.info("digits-r18") == reg.info("digits-r18")
    assert (ref.path / "README.md").read_text() == (reg.root / "digits-r18/1/README.md").read_text()
    a, b = reg.load("digits-r18"), other.load("digits-r18")
    assert _same_tensors(a.tensors, b.tensors) and (a.meta, a.sites, a.config) == (b.meta, b.sites, b.config)
    renamed = other.info(other.import_file(out, name="copy").name)
    assert renamed["name"] == "copy" and renamed["content_sha256"] == reg.info("digits-r18")["content_sha256"]


def test_import_of_a_tampered_export_is_refused(tmp_path, reg, dw_set):
    reg.save("digits-r18", dw_set)
    out = reg.export("digits-r18", tmp_path / "out.safetensors")
    with safe_open(str(out), framework="pt") as f:
        header = dict(f.metadata())
    aset = load_activation_set(out)
    key = next(iter(aset.tensors))
    aset.tensors[key] = aset.tensors[key] + 1.0
    save_activation_set(aset, out, extra={zoo.EXPORT_CARD_KEY: header[zoo.EXPORT_CARD_KEY]})
    other = Registry(tmp_path / "other", bundled_root=None)
    with pytest.raises(IntegrityError, match="tensors differ"):
        other.import_file(out)
    assert other.names() == []


def test_import_of_a_run_activation_file_derives_name_and_card(tmp_path, reg, dw_set):
    run = tmp_path / "run"
    save_activation_set(dw_set, run / "activation.safetensors")
    ref = reg.import_file(run / "activation.safetensors")
    assert str(ref) == "digits-resnet18-sparta-dw@1"
    card = reg.info(ref.name)
    assert (card["arch"], card["dataset"], card["metrics"]) == ("resnet18", "digits", RUN_META["metrics"])
    assert card["train_config"] == RUN_META["train_config"] and card["derived_from"] is None
    assert str(reg.import_file(run, name="from-dir")) == "from-dir@1"  # a run directory works too
    with pytest.raises(FileNotFoundError):
        reg.import_file(tmp_path / "missing.safetensors")


class _Payload:
    """Unpickling this creates a file: proof that something unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def test_pickles_renamed_to_safetensors_are_refused_without_unpickling(tmp_path, reg, dw_set):
    marker = tmp_path / "unpickled"
    zipped, raw, junk = (tmp_path / f"{n}.safetensors" for n in ("zipped", "raw", "junk"))
    torch.save({"payload": _Payload(marker), **dw_set.tensors}, zipped)
    raw.write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    for path in (zipped, raw):
        with pytest.raises(ZooError, match="pickle") as err:
            reg.import_file(path)
        assert str(path) in str(err.value)
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ZooError, match="not a valid safetensors"):
        reg.import_file(junk)
    assert not marker.exists()
    assert reg.names() == []


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_tensor_file_is_refused_before_parsing(monkeypatch, reg, dw_set, damage):
    ref = reg.save("digits-r18", dw_set)
    path = ref.path / "activation.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-5] ^= 0x01  # one bit of one tensor value: still a valid safetensors file
    path.write_bytes(bytes(data))

    def parsed(*args):
        raise AssertionError("a damaged file was parsed")

    monkeypatch.setattr("zoo.registry.tensors_from_bytes", parsed)
    with pytest.raises(IntegrityError, match="sha256") as err:
        reg.load("digits-r18")
    assert str(path) in str(err.value)
    with pytest.raises(IntegrityError):
        reg.export("digits-r18", path.parent.parent / "out.safetensors")


def test_edited_card_is_refused(reg, dw_set):
    ref = reg.save("digits-r18", dw_set)
    card_path = ref.path / "card.json"
    card = json.loads(card_path.read_text())
    card["metrics"] = {"clean": 99.9}  # no longer what the meta says
    card_path.write_text(json.dumps(card))
    with pytest.raises(ZooError, match="disagree"):
        reg.info("digits-r18")
    card["metrics"], card["schema"] = RUN_META["metrics"], "sparta-zoo-card/99"
    card_path.write_text(json.dumps(card))
    with pytest.raises(ZooError, match="unsupported card schema"):
        reg.load("digits-r18")


def _concurrent_writer(root, src, index, barrier):
    registry, aset = Registry(root, bundled_root=None), load_activation_set(src)
    barrier.wait()
    for i in range(3):
        registry.save("shared", aset, card={"description": f"writer {index}, save {i}"})


def test_two_processes_saving_one_name_get_distinct_versions(tmp_path, dw_set):
    src = save_activation_set(dw_set, tmp_path / "src.safetensors")
    root = tmp_path / "zoo"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_concurrent_writer, args=(root, src, i, barrier)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    reg = Registry(root, bundled_root=None)
    assert list(reg.versions("shared")) == [1, 2, 3, 4, 5, 6]
    expected = {f"writer {w}, save {i}" for w in range(2) for i in range(3)}
    assert {reg.info("shared", v)["description"] for v in range(1, 7)} == expected
    for v in range(1, 7):
        assert _same_tensors(reg.load("shared", v).tensors, dw_set.tensors)
    assert not list((root / ".tmp").iterdir())


def test_a_failed_write_leaves_no_entry(monkeypatch, reg, dw_set):
    def broken(card):
        raise OSError("disk full")

    monkeypatch.setattr("zoo.store.render_readme", broken)
    with pytest.raises(ZooError, match="disk full.*nothing was stored"):
        reg.save("digits-r18", dw_set)
    assert reg.versions("digits-r18") == {} and not list((reg.root / ".tmp").iterdir())
    monkeypatch.undo()
    assert reg.save("digits-r18", dw_set).version == 1


def test_list_filters(reg, dw_set, portable_set):
    reg.save("a", dw_set)
    reg.save("a", _variant(dw_set, 1))
    reg.save("b", portable_set)
    reg.save("c", _variant(dw_set, 2, arch="resnet34", dataset="fashion-mnist"))
    refs = lambda **f: [r["ref"] for r in reg.list(**f)]
    assert refs() == ["a@1", "a@2", "b@1", "c@1"]
    assert refs(latest_only=True) == ["a@2", "b@1", "c@1"]
    assert refs(variant="portable") == ["b@1"]
    assert refs(variant="dw", arch="resnet18") == ["a@1", "a@2"]
    assert refs(dataset="fashion-mnist") == ["b@1", "c@1"]
    assert refs(dataset="Fashion-MNIST", arch="resnet34") == ["c@1"]
    assert refs(activation="sparta") == refs() and refs(activation="relu") == []
    row = reg.list(name="b")[0]
    assert (row["activation"], row["variant"], row["origin"], row["metrics"]) == (
        "sparta",
        "portable",
        "user",
        RUN_META["metrics"],
    )
    with pytest.raises(TypeError):
        reg.list(colour="red")


def test_remove_one_version_or_all_and_versions_are_never_reused(reg, dw_set):
    for seed in range(3):
        reg.save("r18", _variant(dw_set, seed))
    assert [str(r) for r in reg.remove("r18", 3)] == ["r18@3"]
    assert reg.load("r18").source == "zoo:r18@2"
    assert [str(r) for r in reg.remove("r18@latest")] == ["r18@2"]
    assert reg.save("r18", dw_set).version == 4  # 2 and 3 were issued before
    assert [str(r) for r in reg.remove("r18")] == ["r18@1", "r18@4"]
    assert reg.names() == [] and reg.list() == []
    with pytest.raises(EntryNotFoundError):
        reg.load("r18")
    with pytest.raises(EntryNotFoundError):
        reg.remove("r18")
    assert reg.save("r18", dw_set).version == 5


def test_bundled_entries_are_listed_loadable_and_read_only(tmp_path, dw_set, portable_set):
    bundled = tmp_path / "bundled"
    Registry(bundled, bundled_root=None).save("digits", dw_set)
    reg = Registry(tmp_path / "user", bundled_root=bundled)
    assert [(r["ref"], r["origin"]) for r in reg.list()] == [("digits@1", "bundled")]
    assert reg.load("digits").source == "zoo:digits@1"
    assert _same_tensors(reg.load("digits").tensors, dw_set.tensors)

    ref = reg.save("digits", portable_set)  # the next version, in the user root
    assert (ref.version, ref.path.parent.parent) == (2, reg.root)
    assert [(r["ref"], r["origin"]) for r in reg.list()] == [("digits@1", "bundled"), ("digits@2", "user")]
    assert reg.load("digits").config["variant"] == "portable"
    with pytest.raises(ZooError, match="read-only"):
        reg.remove("digits", 1)
    reg.remove("digits")  # every user version; the bundled one stays
    assert [r["ref"] for r in reg.list()] == ["digits@1"]
    with pytest.raises(ZooError, match="read-only"):
        reg.remove("digits")

    clash = reg.root / "digits" / "1"  # the user root wins where both hold NAME@VERSION
    Registry(tmp_path / "elsewhere", bundled_root=None).save("digits", portable_set)
    clash.parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "elsewhere" / "digits" / "1").rename(clash)
    assert reg.resolve("digits", 1).origin == "user"
    assert reg.load("digits", 1).config["variant"] == "portable"
    assert not list(bundled.glob("*/*/.*"))


def test_root_comes_from_argument_then_env_then_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARTA_ZOO", str(tmp_path / "env"))
    assert Registry().root == tmp_path / "env"
    assert Registry(tmp_path / "arg").root == tmp_path / "arg"
    monkeypatch.delenv("SPARTA_ZOO")
    assert Registry().root == Path(user_cache_dir("sparta-transfer")) / "zoo"
    assert Registry().bundled_root is None  # the test session hides bundled entries
    monkeypatch.setenv("SPARTA_ZOO_BUNDLED", str(tmp_path / "shipped"))
    assert Registry().bundled_root == tmp_path / "shipped"
    monkeypatch.delenv("SPARTA_ZOO_BUNDLED")
    assert Registry().bundled_root == Path(zoo.__file__).parent / "bundled"


def test_end_to_end_trained_r18_to_frozen_r34_through_the_zoo(reg):
    torch.manual_seed(0)
    source = _tiny("resnet18")
    inject(source, "sparta", variant="dw")
    opt = torch.optim.SGD(source.parameters(), lr=0.5)
    x, y = torch.rand(16, 3, 16, 16), torch.randint(0, 10, (16,))
    source.train()
    for _ in range(3):  # "trained": the activations moved away from their Swish initialisation
        opt.zero_grad()
        torch.nn.functional.cross_entropy(source(x), y).backward()
        opt.step()
    trained = extract(source, meta={"arch": "resnet18", "dataset": "random", "metrics": {"clean": 10.0}})
    fresh = extract(_fresh_r18())
    assert not _same_tensors(trained.tensors, fresh.tensors)

    reg.save("random-r18-sparta", trained)
    loaded = reg.load("random-r18-sparta")
    target = _tiny("resnet34")
    report = inject(target, loaded, policy="stage", freeze=True)
    assert report.source == "zoo:random-r18-sparta@1"
    assert "zoo:random-r18-sparta@1" in str(report)
    before = {k: v.clone() for k, v in extract(target).tensors.items()}
    for e in report.entries:
        for param, value in loaded.state_for(e.source).items():
            assert torch.equal(before[f"{e.target}/{param}"], value)

    opt = torch.optim.SGD(target.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    target.train()
    backbone = {n: p.clone() for n, p in target.named_parameters() if p.requires_grad}
    opt.zero_grad()
    torch.nn.functional.cross_entropy(target(x), y).backward()
    opt.step()
    assert _same_tensors(extract(target).tensors, before)
    assert any(not torch.equal(p, backbone[n]) for n, p in target.named_parameters() if n in backbone)


def _fresh_r18():
    model = _tiny("resnet18")
    inject(model, "sparta", variant="dw")
    return model
