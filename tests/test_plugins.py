"""runtime.plugins: the one shape of the plug-in tables (engines, indexes, sources, sinks, triggers)."""

from __future__ import annotations

import sys

import pytest

from runtime.plugins import Plugin, PluginTable


def test_lookup_names_the_choices_and_a_close_key():
    table = PluginTable("--search", [Plugin("numpy", "json", "dumps"), Plugin("faiss", "json", "loads")])
    assert table.keys() == ("numpy", "faiss") and "faiss" in table and len(table) == 2
    assert table.get("faiss").key == "faiss" and table.find("nope") is None
    with pytest.raises(ValueError, match=r"--search 'fais' is not known: choose numpy, faiss; did you mean faiss\?"):
        table.get("fais")


def test_lookup_raises_the_tables_error():
    class UsageProblem(Exception):
        pass

    table = PluginTable("--publish scheme", [Plugin("mqtt", "json", "dumps")], error=UsageProblem)
    with pytest.raises(UsageProblem, match="choose mqtt"):
        table.get("opc")


def test_duplicate_keys_are_refused():
    with pytest.raises(ValueError, match="duplicate keys"):
        PluginTable("x", [Plugin("a", "json", "dumps"), Plugin("a", "json", "loads")])


def test_a_rows_module_is_imported_only_when_used(tmp_path, monkeypatch):
    (tmp_path / "plugin_probe_mod.py").write_text("def make(x):\n    return x * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("plugin_probe_mod", None)
    row = Plugin("probe", "plugin_probe_mod", "make")
    PluginTable("probe", [row])
    assert "plugin_probe_mod" not in sys.modules
    assert row.make(21) == 42 and "plugin_probe_mod" in sys.modules


def test_available_says_what_is_missing():
    ok, why = Plugin("genicam", "no_such_module_for_plugins_test", "X", needs="the [genicam] extra").available()
    assert not ok and "genicam needs the [genicam] extra" in why
    assert Plugin("json", "json", "dumps").available() == (True, "")


def test_describe_rows():
    table = PluginTable("s", [Plugin("sqlite", "json", "dumps", what="a file", example="sqlite:///x.db"),
                              Plugin("mqtt", "json", "dumps", needs="paho-mqtt")])
    assert table.describe(key_name="scheme", no_needs="(standard library)") == [
        {"scheme": "sqlite", "needs": "(standard library)", "what": "a file", "example": "sqlite:///x.db"},
        {"scheme": "mqtt", "needs": "paho-mqtt", "what": "", "example": ""}]
