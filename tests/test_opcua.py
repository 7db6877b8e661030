"""OPC UA in both roles against real asyncua peers in the test process: the runtime's own server
read by a plain asyncua client, and the runtime writing into a "PLC"'s nodes named in a mapping
file; every bad mapping or URL is exit 2 with one line at start."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

pytest.importorskip("asyncua")

from runtime.cli.app import app  # noqa: E402
from runtime.line.sinks.base import SinkError  # noqa: E402
from runtime.line.sinks.delivery import Publisher  # noqa: E402

from .line_servers import OpcUaPlc, free_port, wait_for  # noqa: E402

RECS = [{"id": "r1", "file": "a.png", "score": 1.5, "normalised": 0.25, "verdict": "ok", "bundle": "b-1",
         "time": "2026-03-04T05:06:07.890Z"},
        {"id": "r2", "file": "b.png", "score": 4.5, "normalised": 0.75, "verdict": "ng", "bundle": "b-1",
         "time": "2026-03-04T05:06:08.000Z"}]




def test_runtime_server_is_readable_by_a_plain_asyncua_client(tmp_path):
    from asyncua.sync import Client

    port = free_port()
    with Publisher([f"opc.tcp://127.0.0.1:{port}?serve"], tmp_path, print) as pub:
        for r in RECS:
            pub.publish(dict(r))
        wait_for(lambda: pub.stats()[0].delivered == 2, 10, "2 results on the server")
        c = Client(f"opc.tcp://127.0.0.1:{port}/", timeout=4)
        c.connect()
        try:
            ns = c.get_namespace_index("urn:patchcore-rt:vision")
            vs = c.nodes.objects.get_child([f"{ns}:VisionSystem"])
            read = {n.read_browse_name().Name: n.read_value() for n in vs.get_children()}
        finally:
            c.disconnect()
    assert read["State"] == "Operational"
    assert read["ResultCounter"] == 2 and read["ResultId"] == "r2" and read["PartId"] == "b.png"
    assert read["Verdict"] == "ng" and read["IsNg"] is True and read["IsOk"] is False
    assert read["Score"] == 4.5 and read["NormalisedScore"] == 0.75 and read["BundleId"] == "b-1"
    assert read["CreationTime"].isoformat().startswith("2026-03-04T05:06:08")


def test_runtime_server_port_taken_is_exit_2(tmp_path, plc):
    with pytest.raises(SinkError, match="cannot serve OPC UA"):
        Publisher([f"opc.tcp://127.0.0.1:{plc.port}?serve"], tmp_path, print).open()


def test_client_writes_into_the_plc_nodes_in_their_own_types_and_survives_a_plc_restart(tmp_path):
    port = free_port()
    mapping = tmp_path / "nodes.json"
    mapping.write_text(json.dumps({"nodes": {k: f"ns=2;s=Cell.{v}" for k, v in {
        "verdict": "Verdict", "score": "Score", "normalised": "Normalised", "counter": "Counter", "ok": "Ok",
        "part_id": "PartId", "result_id": "ResultId"}.items()}}))
    url = f"opc.tcp://127.0.0.1:{port}?map={mapping}"
    with OpcUaPlc(port) as plc:
        plc.set("Counter", 41)
        pub = Publisher([url], tmp_path, print).open()
        try:
            pub.publish(dict(RECS[0]))
            wait_for(lambda: plc.get("Counter") == 42, 10, "the first result")
            assert (plc.get("Verdict"), plc.get("Ok"), plc.get("PartId"), plc.get("ResultId")) == ("ok", True, "a.png", "r1")
            assert math.isclose(plc.get("Score"), 1.5) and plc.get("Normalised") == 250  # Int16: thousandths
            pub.publish(dict(RECS[1]))
            wait_for(lambda: plc.get("Counter") == 43, 10, "the second result")
            assert (plc.get("Verdict"), plc.get("Ok"), plc.get("Normalised")) == ("ng", False, 750)
        except BaseException:
            pub.close(0)
            raise
    # the PLC is away: the next result waits, and arrives once it is back
    pub.publish({**RECS[0], "id": "r3", "file": "c.png"})
    wait_for(lambda: pub.stats()[0].state == "down", 15, "the sink to report down")
    with OpcUaPlc(port) as plc:
        try:
            wait_for(lambda: plc.get("ResultId") == "r3", 30, "the waiting result after the PLC came back")
            assert plc.get("PartId") == "c.png"
        finally:
            pub.close(2)


BAD = [
    ({"nodes": {"verdict": "ns=2;s=Cell.NoSuchNode"}}, "ns=2;s=Cell.NoSuchNode (verdict) does not exist"),
    ({"nodes": {"verdict": "not a node id"}}, "not a valid OPC UA node id"),
    ({"nodes": {"colour": "ns=2;s=Cell.Verdict"}}, "unknown key 'colour'"),
    ({"nodes": {}}, "needs {\"nodes\""),
    ("{not json", "is not JSON"),
    (None, "not found"),
]


@pytest.fixture(scope="module")
def plc():
    with OpcUaPlc() as p:
        yield p


@pytest.mark.parametrize("content,says", BAD)
def test_bad_mapping_is_exit_2_with_one_line_before_any_image(tmp_path, rt_bundle, plc, content, says):
    (tmp_path / "in").mkdir()
    mapping = tmp_path / "nodes.json"
    if content is not None:
        mapping.write_text(content if isinstance(content, str) else json.dumps(content))
    (tmp_path / "in" / "part.png").write_bytes(b"not scored: the command stops first")
    res = CliRunner().invoke(app, ["watch", str(tmp_path / "in"), "--bundle", str(rt_bundle), "--once",
                                   "--device", "cpu", "--out", str(tmp_path / "out"),
                                   "--publish", f"{plc.url}?map={mapping}"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in res.output, res.output
    journal = tmp_path / "out" / "results.jsonl"
    assert not journal.exists() or not journal.read_text()  # no image was taken


@pytest.mark.parametrize("url,says", [
    ("opc.tcp://127.0.0.1:4840", "say which role"),
    ("opc.tcp://127.0.0.1:4840?serve&map=x.json", "say which role"),
    ("opc.tcp://127.0.0.1:4840?serve=1", "takes no value"),
    ("opc.tcp://127.0.0.1:4840?map=", "needs the mapping file"),
])
def test_bad_opcua_urls(url, says):
    from runtime.line.sinks.table import make_sink

    with pytest.raises(SinkError, match=says):
        make_sink(url)


def test_plc_unreachable_at_start_is_exit_2(tmp_path):
    mapping = tmp_path / "nodes.json"
    mapping.write_text(json.dumps({"nodes": {"verdict": "ns=2;s=Cell.Verdict"}}))
    with pytest.raises(SinkError, match="cannot connect to check"):
        Publisher([f"opc.tcp://127.0.0.1:{free_port()}?map={mapping}"], tmp_path, print).open()
