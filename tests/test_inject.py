import re

import pytest
import torch
from helpers import sparta_model

from transfer import (
    MappingError,
    PerCallActivation,
    Sparta,
    create_backbone,
    extract,
    find_sites,
    inject,
    load_activation_set,
    param_groups,
    save_activation_set,
)

ARCHS = [
    "resnet18", "resnet34", "resnet50", "wide_resnet50_2", "seresnet18", "regnetx_002",
    "mobilenetv3_small_050", "efficientnet_b0", "densenet121", "vgg11_bn", "dla34", "hrnet_w18_small",
    "ghostnet_050", "repvgg_a0",
]  # fmt: skip


@pytest.mark.parametrize("arch", ARCHS)
def test_fresh_sparta_replaces_every_site_forward_and_backward(arch):
    torch.manual_seed(0)
    model = create_backbone(arch, 10, input_size=32)
    x = torch.rand(2, 3, 32, 32)
    shape = model(x).shape
    sites = find_sites(model, (3, 32, 32))
    report = inject(model, "sparta", variant="dw")
    assert len(report.entries) == len(sites) > 0
    placed = [m for m in model.modules() if isinstance(m, Sparta)]
    assert len(placed) == len(sites)
    assert {m.site_name for m in placed} == {s.name for s in sites}
    model.train()
    y = model(x)
    assert y.shape == shape
    y.square().mean().backward()
    assert all(m.weight.grad is not None for m in placed)
    assert all(s.kind in ("Sparta", "PerCallActivation") for s in find_sites(model, (3, 32, 32)))


def _tiny(arch="resnet18", **kw):
    return create_backbone(arch, 10, input_size=16, width=8, **kw)


def _perturbed_sparta_set(arch="resnet18", variant="dw", seed=0):
    model = sparta_model(arch, variant, seed)
    return model, extract(model, meta={"arch": arch})


def test_frozen_injection_survives_train_mode_and_weight_decay_steps():
    _, aset = _perturbed_sparta_set()
    frozen, trainable = _tiny("resnet34"), _tiny("resnet34")
    inject(frozen, aset, policy="stage", freeze=True)
    inject(trainable, aset, policy="stage", freeze=False)
    for model in (frozen, trainable):
        before = {k: v.clone() for k, v in extract(model).tensors.items()}
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        model.train()
        for _ in range(2):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(torch.rand(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
            opt.step()
        after = extract(model).tensors
        same = all(torch.equal(before[k], after[k]) for k in before)
        assert same is (model is frozen)
    act_ids = {id(p) for m in frozen.modules() if isinstance(m, Sparta) for p in m.parameters()}
    grouped = {id(p) for g in param_groups(frozen, 5e-4) for p in g["params"]}
    assert not act_ids & grouped
    assert {g["name"] for g in param_groups(trainable, 5e-4)} == {"backbone", "backbone_no_decay", "activation"}


def test_frozen_frelu_keeps_its_running_stats_under_train_mode():
    src = _tiny()
    inject(src, "frelu")
    model = _tiny("resnet34")
    inject(model, extract(src), policy="stage", freeze=True)
    before = {k: v.clone() for k, v in extract(model).tensors.items()}
    model.train()
    model(torch.rand(8, 3, 16, 16))
    assert all(torch.equal(before[k], v) for k, v in extract(model).tensors.items())


def test_resnet18_to_resnet34_stage_policy_feeds_equal_widths_in_the_same_stage():
    _, aset = _perturbed_sparta_set()
    target = create_backbone("resnet34", 10, input_size=16, width=8)
    report = inject(target, aset, policy="stage", freeze=True)
    src = {s.name: s for s in aset.sites}
    tgt = {s.name: s for s in find_sites(target, (3, 16, 16))}
    assert len(report.entries) == len(tgt) == 33
    for e in report.entries:
        assert src[e.source].channels == tgt[e.target].channels
        assert src[e.source].stage == tgt[e.target].stage
    # 2 source blocks per stage feed 3/4/6/3 target blocks: every source block is used
    assert {e.source for e in report.entries} == set(src)
    # the injected parameters are the source's
    first_l3 = next(m for m in target.modules() if isinstance(m, Sparta) and m.site_name == "layer3.5.act2")
    torch.testing.assert_close(first_l3.weight, aset.state_for(report.mapping["layer3.5.act2"])["weight"])


@pytest.mark.parametrize("policy", ["shared", "depth"])
def test_shared_and_depth_policies_map_by_width(policy):
    _, aset = _perturbed_sparta_set()
    target = _tiny("resnet34")
    report = inject(target, aset, policy=policy)
    src = {s.name: s for s in aset.sites}
    tgt = {s.name: s for s in find_sites(target, (3, 16, 16))}
    assert len(report.entries) == len(tgt) == 33
    assert all(src[e.source].channels == tgt[e.target].channels for e in report.entries)
    if policy == "shared":
        assert len({e.source for e in report.entries}) == len({s.channels for s in src.values()}) == 4
    else:  # the nearest relative depth among the equal-width sources, ties to the earlier one
        for e in report.entries:
            t = tgt[e.target]
            same_width = [s for s in aset.sites if s.channels == t.channels]
            nearest = min(same_width, key=lambda s, t=t: abs(s.relative_depth - t.relative_depth))
            assert e.source == nearest.name
        assert len({e.source for e in report.entries}) > 4  # unlike "shared", not one source per width


def test_exact_between_different_archs_fails_naming_the_sites():
    _, aset = _perturbed_sparta_set()
    with pytest.raises(MappingError, match=r"'exact' cannot map .*layer1\.2\.act1 \(C=8"):
        inject(_tiny("resnet34"), aset, policy="exact")


def test_exact_on_the_same_arch_reproduces_the_source_function():
    source, aset = _perturbed_sparta_set()
    target = _tiny()
    target.load_state_dict(source.state_dict(), strict=False)
    inject(target, aset, policy="exact")
    x = torch.rand(2, 3, 16, 16)
    source.eval(), target.eval()
    torch.testing.assert_close(target(x), source(x))


def test_dw_cannot_cross_widths_but_portable_goes_anywhere():
    _, dw = _perturbed_sparta_set()
    eff = create_backbone("efficientnet_b0", 10, input_size=32)
    with pytest.raises(MappingError, match="portable"):
        inject(eff, dw, policy="depth")
    _, portable = _perturbed_sparta_set(variant="portable")
    for policy in ("stage", "depth", "shared"):
        model = create_backbone("efficientnet_b0", 10, input_size=32)
        report = inject(model, portable, policy=policy, freeze=True)
        assert all(e.source for e in report.entries)
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("activation", ["prelu", "frelu"])
def test_a_per_channel_activation_of_another_width_is_named_with_its_widths(activation):
    source = _tiny()
    inject(source, activation)
    aset = extract(source)
    wider = create_backbone("resnet18", 10, input_size=16, width=16)
    with pytest.raises(MappingError) as info:
        inject(wider, aset, policy="stage")
    message = str(info.value)
    assert re.search(
        rf"{activation} (\{{.*\}} )?holds parameters per channel: this set has them for widths "
        r"\[8, 16, 32, 64\], these sites need \[16, 32, 64, 128\]",
        message,
    )
    assert "same widths (same arch and width)" in message and "portable" not in message
    with pytest.raises(MappingError, match="Policy 'depth' or 'shared' takes a source of a fitting width"):
        inject(_tiny("resnet34"), aset, policy="exact")  # resnet34's extra blocks: widths there, names not


def test_extract_save_load_round_trip(tmp_path):
    _, aset = _perturbed_sparta_set()
    path = save_activation_set(aset, tmp_path / "a.safetensors")
    loaded = load_activation_set(path)
    assert loaded.activation == "sparta" and loaded.config == aset.config
    assert loaded.sites == aset.sites and loaded.meta == {"arch": "resnet18"}
    assert set(loaded.tensors) == set(aset.tensors)
    assert all(torch.equal(loaded.tensors[k], aset.tensors[k]) for k in aset.tensors)
    assert loaded.num_parameters == sum(8 * 2**i * 10 for i in range(4) for _ in range(4)) + 8 * 10


def test_multi_call_models_extract_and_reinject(tmp_path):
    model = create_backbone("dla34", 10, input_size=32)
    inject(model, "sparta")
    aset = extract(model)
    assert any("#" in s.name for s in aset.sites)
    fresh = create_backbone("dla34", 10, input_size=32)
    report = inject(fresh, aset, policy="exact", freeze=True)
    assert all(e.source == e.target for e in report.entries)
    assert any(isinstance(m, PerCallActivation) for m in fresh.modules())


def test_bad_injection_requests_are_explained():
    model = _tiny()
    with pytest.raises(ValueError, match="unknown mapping policy 'nearest'"):
        inject(model, _perturbed_sparta_set()[1], policy="nearest")
    with pytest.raises(TypeError, match="registry name or an ActivationSet"):
        inject(model, 3)
    with pytest.raises(ValueError, match="input_shape is needed"):
        inject(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.ReLU()), "sparta")
    with pytest.raises(ValueError, match="outside the registry"):
        extract(_tiny())


def test_inject_records_its_sites_and_report_in_one_sparta_info():
    model = _tiny()
    built = model.sparta_info
    assert (built.input_shape, built.stem, built.sites, built.injection) == ((3, 16, 16), "cifar", None, None)
    before = find_sites(model, (3, 16, 16))
    report = inject(model, "prelu")
    info = model.sparta_info
    assert info.injection is report and info.sites == before  # the sites it found (kind "ReLU")
    assert (info.input_shape, info.stem) == (built.input_shape, built.stem)
    assert [k for k in vars(model) if "sparta" in k] == ["sparta_info"]  # no loose attributes beside it


def test_a_plain_model_gets_its_info_on_injection_and_one_counter_reset_hook():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU())
    assert find_sites(model, (3, 4, 4)) and not hasattr(model, "sparta_info")
    inject(model, "sparta", input_shape=(3, 4, 4))
    assert model.sparta_info.input_shape is None and len(model.sparta_info.sites) == 1
    assert extract(model).sites == model.sparta_info.sites  # extract reads the recorded sites

    twice = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU())
    twice.forward = lambda x: twice[1](twice[1](twice[0](x)))  # one ReLU module called twice
    for _ in range(2):
        inject(twice, "sparta", input_shape=(3, 4, 4))
    assert isinstance(twice[1], PerCallActivation) and twice.sparta_info.resets_call_counters
    assert len(twice._forward_pre_hooks) == 1  # re-injecting does not stack reset hooks


def test_a_model_without_activations_is_refused():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Flatten())
    assert find_sites(model, (3, 4, 4)) == []
    with pytest.raises(ValueError, match="Sequential has no activation sites to inject into"):
        inject(model, "sparta", input_shape=(3, 4, 4))


@pytest.mark.parametrize("policy", ["nope", "", None])
def test_the_policy_is_checked_for_fresh_activations_too(policy):
    model = _tiny()
    expected = rf"unknown mapping policy {re.escape(repr(policy))}; choose one of exact, stage, role, depth, shared"
    with pytest.raises(ValueError, match=expected):
        inject(model, "sparta", policy=policy)
    assert not any(isinstance(m, Sparta) for m in model.modules())  # refused before the model was touched


def _relu_net():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU())


def test_the_old_input_size_keyword_works_for_one_release_with_a_warning():
    model = _relu_net()
    names = [s.name for s in find_sites(model, (3, 4, 4))]
    calls = [
        ("find_sites", lambda: find_sites(model, input_size=(3, 4, 4))),
        ("inject", lambda: inject(model, "sparta", input_size=[3, 4, 4])),
        ("extract", lambda: extract(model, input_size=(3, 4, 4))),
    ]
    for name, call in calls:
        with pytest.warns(DeprecationWarning) as caught:
            result = call()
        message = str(caught[0].message)
        assert message == (
            f"{name}(input_size=...) is deprecated and will be removed in the next release; write "
            "input_shape=(3, 4, 4) instead (input_size now means the image side alone)"
        )
        assert caught[0].filename == __file__  # the warning points at the caller's line
        sites = result if name == "find_sites" else result.entries if name == "inject" else result.sites
        assert [getattr(s, "name", getattr(s, "target", None)) for s in sites] == names
    assert isinstance(model[1], Sparta)


@pytest.mark.parametrize("name", ["find_sites", "inject", "extract"])
def test_both_input_keywords_or_an_int_for_the_old_one_are_errors(name):
    model = _relu_net()
    call = {
        "find_sites": lambda **kw: find_sites(model, **kw),
        "inject": lambda **kw: inject(model, "sparta", **kw),
        "extract": lambda **kw: extract(model, **kw),
    }[name]
    with pytest.raises(ValueError, match=rf"^{name}\(\) got both input_shape and input_size; pass input_shape="):
        call(input_shape=(3, 4, 4), input_size=(3, 4, 4))
    with pytest.raises(
        ValueError,
        match=rf"^{name}\(input_size=...\) is the old name of input_shape, the \(C, H, W\) "
        r"of one input, got 32; pass input_shape=\(C, S, S\)",
    ):
        call(input_size=32)
    assert type(model[1]) is torch.nn.ReLU


def test_deliberately_frozen_modules_keep_their_mode_and_injected_ones_take_it():
    model = _tiny("resnet18").train()
    model.bn1.eval()  # a frozen stem BatchNorm inside a training model
    find_sites(model, (3, 16, 16))
    assert model.training and model.layer1[0].bn1.training and not model.bn1.training
    inject(model, "frelu")
    assert model.training and model.layer1[0].bn1.training and not model.bn1.training
    assert model.act1.training and model.act1.bn.training  # the FReLU replacing a training ReLU trains
    evaluated = _tiny("resnet18").eval()
    inject(evaluated, "frelu")
    assert not any(m.training for m in evaluated.modules())  # no FReLU BatchNorm left collecting statistics
