import pytest

from transfer.registry import NameRegistry


def test_name_registry_registers_lists_resolves_and_explains():
    reg = NameRegistry("widget", {"w": "wide"})

    @reg.register("wide")
    class Wide:
        pass

    reg.add("narrow", object)
    assert Wide.registry_name == "wide" and reg.get("WIDE") is Wide and reg.get("w") is Wide
    assert reg.names() == ["narrow", "wide"] and reg.names("n*") == ["narrow"]
    with pytest.raises(ValueError, match=r"unknown widget 'tall'; choose one of narrow, wide \(aliases: w→wide\)"):
        reg.get("tall")
    with pytest.raises(ValueError, match="widget 'wide' is already registered"):
        reg.add("wide", object)
