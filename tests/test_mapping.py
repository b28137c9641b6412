"""Properties of the mapping policies over random site tables, against brute-force expectations.

Site tables here are shaped like what ``find_sites`` returns: sites in forward order, stages
0, 1, … in order, relative depth i / (n - 1). ``same_width`` is the compatibility of the per-width variants (``dw``,
``full``); ``anything`` is that of ``portable``.
"""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transfer.mapping import POLICIES, MappingError, map_sites
from transfer.sites import Site

WIDTHS = (4, 8, 16)


def same_width(source, target):
    return source.channels == target.channels


def anything(source, target):
    return True


ROLES = ("plain", "after-add")


def _table(prefix, stages):
    """Sites ``prefix0, prefix1, …`` in forward order from the widths of each stage's sites; roles alternate
    plain / after-add within a stage, as ResNet blocks' act1 / act2 do."""
    layout = [(stage, width, ROLES[j % 2]) for stage, widths in enumerate(stages) for j, width in enumerate(widths)]
    n = len(layout)
    return [
        Site(f"{prefix}{i}", f"{prefix}{i}", 0, width, (4, 4), stage, i / (n - 1) if n > 1 else 0.0, "ReLU", role=role)
        for i, (stage, width, role) in enumerate(layout)
    ]


@st.composite
def site_tables(draw):
    """(sources, targets): mostly with the same number of stages (as between two CNNs of one family),
    sometimes not, so that ``stage`` both maps and fails; the target names ``s…`` half the time, so that
    ``exact`` can match names."""
    n_sources = draw(st.integers(1, 4))
    n_targets = draw(st.sampled_from([n_sources, n_sources, n_sources, 1, 2, 3, 4, 5]))
    stage = st.lists(st.sampled_from(WIDTHS), min_size=1, max_size=4)
    sources = draw(st.lists(stage, min_size=n_sources, max_size=n_sources))
    targets = draw(st.lists(stage, min_size=n_targets, max_size=n_targets))
    return _table("s", sources), _table(draw(st.sampled_from("st")), targets)


def _stage_position(site, table, by_role=False):
    """Brute force: index of the site among its stage's sites (of its role, ``by_role``), over that count
    minus one."""
    group = [s.name for s in table if s.stage == site.stage and (not by_role or s.role == site.role)]
    return group.index(site.name) / (len(group) - 1) if len(group) > 1 else 0.0


def _expected(policy, sources, targets, compatible):
    """The source each target should get (None: none may feed it), by exhaustive search."""
    expected = {}
    for t in targets:
        if policy == "exact":
            cands = [s for s in sources if s.name == t.name and compatible(s, t)]
            expected[t.name] = cands[0].name if cands else None
            continue
        cands = [
            s
            for s in sources
            if compatible(s, t)
            and (policy not in ("stage", "role") or s.stage == t.stage)
            and (policy != "role" or s.role == t.role)
        ]
        if not cands:
            expected[t.name] = None
        elif policy == "shared":
            expected[t.name] = cands[0].name
        else:
            if policy == "depth":
                dist = {s.name: abs(s.relative_depth - t.relative_depth) for s in cands}
            else:
                by_role = policy == "role"
                tpos = _stage_position(t, targets, by_role)
                dist = {s.name: abs(_stage_position(s, sources, by_role) - tpos) for s in cands}
            best = min(dist.values())
            expected[t.name] = next(s.name for s in cands if dist[s.name] == best)  # ties: earliest
    return expected


@settings(max_examples=80, deadline=None)
@given(tables=site_tables(), compatible=st.sampled_from([same_width, anything]))
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy_picks_the_brute_force_source_or_names_the_sites_it_cannot_map(policy, tables, compatible):
    sources, targets = tables
    expected = _expected(policy, sources, targets, compatible)
    unmatched = [name for name, src in expected.items() if src is None]
    if unmatched:
        with pytest.raises(MappingError) as info:
            map_sites(sources, targets, policy, compatible)
        assert [s.name for s in info.value.unmatched] == unmatched
        message = str(info.value)
        assert f"policy {policy!r} cannot map {len(unmatched)} target site(s)" in message
        assert all(f"{name} (C=" in message for name in unmatched[:12])
        return
    mapping = map_sites(sources, targets, policy, compatible)
    assert mapping == expected


@settings(max_examples=60, deadline=None)
@given(tables=site_tables())
def test_per_width_mappings_feed_every_site_an_equal_width_source(tables):
    sources, targets = tables
    by_name = {s.name: s for s in sources}
    fed = {t.name: t for t in targets}
    for policy in ("stage", "depth", "shared"):
        try:
            mapping = map_sites(sources, targets, policy, same_width)
        except MappingError as exc:
            # only targets whose width (in their stage, for "stage") no source has are left out
            for t in exc.unmatched:
                pool = [s for s in sources if policy != "stage" or s.stage == t.stage]
                assert t.channels not in {s.channels for s in pool}
            continue
        assert set(mapping) == set(fed)
        assert all(by_name[src].channels == fed[tgt].channels for tgt, src in mapping.items())
        if policy == "stage":
            assert all(by_name[src].stage == fed[tgt].stage for tgt, src in mapping.items())
        if policy == "shared":  # one source per width
            assert len(set(mapping.values())) == len({t.channels for t in targets})


@settings(max_examples=40, deadline=None)
@given(tables=site_tables())
def test_width_free_activations_map_everywhere_by_depth_and_shared(tables):
    sources, targets = tables
    for policy in ("depth", "shared"):
        assert set(map_sites(sources, targets, policy, anything)) == {t.name for t in targets}
    assert set(map_sites(sources, sources, "exact", same_width).items()) == {(s.name, s.name) for s in sources}


def test_depth_picks_the_nearest_depth_and_breaks_ties_towards_the_earlier_site():
    sources = _table("s", [[4, 4, 4]])  # depths 0, 0.5, 1
    targets = _table("t", [[4, 4, 4, 4, 4]])  # depths 0, 0.25, 0.5, 0.75, 1
    assert map_sites(sources, targets, "depth", same_width) == {
        "t0": "s0", "t1": "s0", "t2": "s1", "t3": "s1", "t4": "s2",
    }  # fmt: skip


def test_bad_policy_and_empty_sources_are_explained():
    sites = _table("s", [[4]])
    known = "exact, stage, role, depth, shared"
    with pytest.raises(ValueError, match=f"unknown mapping policy 'nearest'; choose one of {known}"):
        map_sites(sites, sites, "nearest", same_width)
    with pytest.raises(ValueError, match="no sites to map from"):
        map_sites([], sites, "depth", same_width)


sites = st.builds(
    Site,
    name=st.text(min_size=1),
    module_path=st.text(min_size=1),
    call_index=st.integers(0, 1000),
    channels=st.integers(1, 4096),
    spatial=st.lists(st.integers(1, 512), max_size=3).map(tuple),
    stage=st.integers(0, 10),
    relative_depth=st.floats(0.0, 1.0),
    kind=st.text(),
    layout=st.sampled_from(["NCHW", "NHWC"]),
)


@settings(max_examples=100, deadline=None)
@given(site=sites)
def test_site_records_round_trip_through_dict_and_json(site):
    assert Site.from_dict(site.to_dict()) == site
    assert Site.from_dict(json.loads(json.dumps(site.to_dict()))) == site


def test_role_keeps_residual_roles_apart_where_stage_mixes_them():
    """ResNet-18 → ResNet-34: stage feeds 14 of 33 sites from a source of the other role (a gate trained
    after a residual add put before one, or the other way round); role feeds none."""
    from transfer import create_backbone, find_sites

    src = find_sites(create_backbone("resnet18", 10, in_chans=1, input_size=16, width=8), (1, 16, 16))
    tgt = find_sites(create_backbone("resnet34", 10, in_chans=1, input_size=16, width=8), (1, 16, 16))
    assert [s.role for s in src[:5]] == ["plain", "plain", "after-add", "plain", "after-add"]  # stem, act1, act2, …
    roles = {s.name: s.role for s in src}
    mapped = {p: map_sites(src, tgt, p, same_width) for p in ("stage", "role")}
    mixed = {p: sum(roles[m[t.name]] != t.role for t in tgt) for p, m in mapped.items()}
    assert mixed == {"stage": 14, "role": 0}
    role = map_sites(src, tgt, "role", same_width)
    assert role["layer1.2.act2"] == "layer1.1.act2" and role["layer1.1.act1"] == "layer1.0.act1"


def test_role_needs_recorded_roles():
    old = [Site.from_dict({**s.to_dict(), "role": ""}) for s in _table("s", [[4, 4]])]
    assert "role" not in old[0].to_dict()
    with pytest.raises(ValueError, match="policy 'role' needs the role of every site"):
        map_sites(old, _table("t", [[4, 4]]), "role", same_width)


def test_a_sum_feeding_an_activation_is_an_after_add_site_in_any_model():
    import torch
    from torch import nn

    from transfer import find_sites

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.inner, self.outer, self.other = nn.Conv2d(2, 2, 1), nn.ReLU(), nn.GELU(), nn.SiLU()

        def forward(self, x):
            y = self.outer(x + self.inner(self.conv(x)))  # a residual add, then an activation
            return self.other(torch.add(y, 1.0) * 2)  # a sum, scaled: no longer the sum itself

    roles = {s.name: s.role for s in find_sites(Block(), (2, 4, 4))}
    assert roles == {"inner": "plain", "outer": "after-add", "other": "plain"}
