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


def _table(prefix, stages):
    """Sites ``prefix0, prefix1, …`` in forward order from the widths of each stage's sites."""
    layout = [(stage, width) for stage, widths in enumerate(stages) for width in widths]
    n = len(layout)
    return [
        Site(f"{prefix}{i}", f"{prefix}{i}", 0, width, (4, 4), stage, i / (n - 1) if n > 1 else 0.0, "ReLU")
        for i, (stage, width) in enumerate(layout)
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


def _stage_position(site, table):
    """Brute force: index of the site among its stage's sites, over that count minus one."""
    group = [s.name for s in table if s.stage == site.stage]
    return group.index(site.name) / (len(group) - 1) if len(group) > 1 else 0.0


def _expected(policy, sources, targets, compatible):
    """The source each target should get (None: none may feed it), by exhaustive search."""
    expected = {}
    for t in targets:
        if policy == "exact":
            cands = [s for s in sources if s.name == t.name and compatible(s, t)]
            expected[t.name] = cands[0].name if cands else None
            continue
        cands = [s for s in sources if compatible(s, t) and (policy != "stage" or s.stage == t.stage)]
        if not cands:
            expected[t.name] = None
        elif policy == "shared":
            expected[t.name] = cands[0].name
        else:
            if policy == "depth":
                dist = {s.name: abs(s.relative_depth - t.relative_depth) for s in cands}
            else:
                tpos = _stage_position(t, targets)
                dist = {s.name: abs(_stage_position(s, sources) - tpos) for s in cands}
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
    with pytest.raises(ValueError, match="unknown mapping policy 'nearest'; choose one of exact, stage, depth, shared"):
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
