"""The decorator registry."""

import pytest

from common.registry import Registry, UnknownNameError


def test_register_get_and_list():
    reg = Registry("widget")

    @reg.register("b")
    def b():
        return 2

    @reg.register()
    def a():
        return 1

    assert reg.get("a") is a and reg.get("b")() == 2
    assert reg.names() == ["a", "b"] and "a" in reg and len(reg) == 2
    assert list(reg) == ["a", "b"]


def test_miss_lists_valid_names():
    reg = Registry("widget")
    reg.add("alpha", 1)
    reg.add("beta", 2)
    with pytest.raises(UnknownNameError, match="unknown widget 'gamma'; valid names: alpha, beta"):
        reg.get("gamma")
    with pytest.raises(KeyError):  # still a KeyError for callers that catch that
        reg.get("gamma")
    with pytest.raises(UnknownNameError, match=r"\(none registered\)"):
        Registry("x").get("y")


def test_duplicate_names_need_overwrite():
    reg = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("a", 2)
    reg.add("a", 3, overwrite=True)
    assert reg.get("a") == 3
    with pytest.raises(ValueError, match="non-empty string"):
        reg.add("", 1)


def test_unregister_removes_the_entry_and_returns_it():
    reg = Registry("widget")
    reg.add("a", 1)
    reg.add("b", 2)
    assert reg.unregister("a") == 1
    assert reg.names() == ["b"] and "a" not in reg and len(reg) == 1
    with pytest.raises(UnknownNameError, match="unknown widget 'a'; valid names: b"):
        reg.unregister("a")
    reg.add("a", 3)  # the name is free again, no overwrite needed
    assert reg.get("a") == 3
