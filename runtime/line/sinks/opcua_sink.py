"""``opc.tcp://...``: OPC UA (asyncua), in either role.

* ``opc.tcp://0.0.0.0:4840?serve``: the runtime is an OPC UA **server** (as OPC 40100 has the
  vision system): ``Objects/VisionSystem`` with the result model of :mod:`.opcua_model` as
  variables (node ids ``ns=<urn:patchcore-rt:vision>;s=VisionSystem.<Name>``), which a PLC or an
  MES reads or subscribes to; ``ResultCounter`` is written last, so a subscription to it sees a
  whole result. Without options it is anonymous with no message security (a cell network only);
  ``&security=encrypt&cert=server.pem&key=server-key.pem`` (or ``sign``) makes it Basic256Sha256
  with a user and password (``opc.tcp://line@0.0.0.0:4840?serve&...&password_file=PATH``) and/or
  client certificates (``trust=PATH``) as the only logins: see :mod:`.opcua_conn`. A port that
  cannot be bound, or a certificate that does not load, is exit 2 at start.
* ``opc.tcp://plc:4840?map=nodes.json``: the runtime is a **client** writing each result into a
  PLC's own nodes, named in a mapping file (``{"nodes": {"verdict": "ns=3;s=\\"DB_Vision\\".Verdict",
  ...}}``, keys from the model: ``result_id part_id score normalised verdict ok ng bundle_id
  time counter``). Each value is converted to the node's own data type (a float score into an
  integer node is written in thousandths); ``counter`` is written last. At start the PLC must be
  reachable and every node must exist and be writable (exit 2 otherwise: one line naming the
  node); later, a PLC that goes away is a logged state change and its results wait.
  Security and login: the same options (``security=``, ``cert=``, ``key=``, ``server_cert=``,
  ``login=cert``, ``password_file=`` ...) in :mod:`.opcua_conn`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import opcua_model as model
from .base import SinkDown, SinkError, need, query, redact, split
from .opcua_conn import (CLIENT_KEYS, SERVER_KEYS, Security, close_client, connect_client,  # noqa: F401
                         load_mapping, quiet, resolve_nodes, secure_server, security_options, write_nodes)

NAMESPACE = "urn:patchcore-rt:vision"


class OpcUaClientSink:
    def __init__(self, url: str, raw: str, mapping_path: Path, sec: Security | None = None):
        self.url, self.raw, self.mapping_path, self.sec = url, raw, mapping_path, sec
        self.mapping = load_mapping(mapping_path, f"--publish {url}")
        self.client = None
        self.nodes: dict[str, tuple[Any, Any]] = {}
        self.counter = 0

    def open(self) -> None:
        shown = f"--publish {self.url}"
        try:
            self.client = connect_client(self.raw, shown, self.sec)
        except ConnectionError as e:
            raise SinkError(f"{shown}: cannot connect to check the mapping's nodes ({e})") from None
        try:
            self.nodes = resolve_nodes(self.client, self.mapping, shown)
            if "counter" in self.nodes:
                self.counter = int(self.nodes["counter"][0].read_value() or 0)
        except BaseException:
            self.close()
            raise

    def send(self, record: dict[str, Any], record_id: str) -> None:
        try:
            if self.client is None:
                self.client = connect_client(self.raw, self.url, self.sec)
                self.nodes = resolve_nodes(self.client, self.mapping, self.url)
            write_nodes(self.nodes, model.values(record, record_id, self.counter + 1))
            self.counter += 1
        except Exception as e:  # noqa: BLE001 - connection lost, timeout, a node gone: all "down"
            self.close()
            raise SinkDown(f"{type(e).__name__}: {e}".rstrip(": ")) from None

    def close(self) -> None:
        c, self.client = self.client, None
        if c is not None:
            close_client(c)


class OpcUaServerSink:
    def __init__(self, url: str, host: str, port: int, sec: Security | None = None):
        self.url, self.host, self.port, self.sec = url, host, port, sec or Security()
        self.server = None
        self.vars: dict[str, Any] = {}
        self.counter = 0

    def open(self) -> None:
        need("asyncua", "line", self.url)
        quiet()
        from asyncua import ua
        from asyncua.sync import Server

        server = Server()
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}/")
        server.set_server_name("patchcore-rt")
        try:
            secure_server(server, self.sec, f"--publish {self.url}")
        except BaseException:
            server.tloop.stop()
            raise
        ns = server.register_namespace(NAMESPACE)
        vs = server.nodes.objects.add_object(ua.NodeId("VisionSystem", ns), ua.QualifiedName("VisionSystem", ns))
        self.state = vs.add_variable(ua.NodeId("VisionSystem.State", ns), ua.QualifiedName("State", ns),
                                     "Preoperational", ua.VariantType.String)
        for f in model.FIELDS:
            vt = getattr(ua.VariantType, f.vtype)
            initial = {"String": "", "Double": float("nan"), "Boolean": False, "UInt32": 0}.get(f.vtype)
            if f.vtype == "DateTime":
                initial = model._time(None)
            self.vars[f.key] = (vs.add_variable(ua.NodeId(f"VisionSystem.{f.browse}", ns),
                                                ua.QualifiedName(f.browse, ns), ua.Variant(initial, vt)), vt)
        try:
            server.start()
        except Exception as e:  # noqa: BLE001 - the port is taken, the address is not ours
            try:
                server.tloop.stop()
            except Exception:  # noqa: BLE001
                pass
            raise SinkError(f"--publish {self.url}: cannot serve OPC UA on {self.host}:{self.port} "
                            f"({type(e).__name__}: {e})") from None
        self.server = server
        self.state.write_value("Operational")

    def send(self, record: dict[str, Any], record_id: str) -> None:
        from asyncua import ua

        vals = model.values(record, record_id, self.counter + 1)
        for key in sorted(self.vars, key=lambda k: k == "counter"):
            node, vt = self.vars[key]
            node.write_value(ua.DataValue(ua.Variant(vals[key], vt)))
        self.counter += 1

    def close(self) -> None:
        s, self.server = self.server, None
        if s is not None:
            try:
                self.state.write_value("Halted")
            finally:
                s.stop()


def make(url: str):
    parts = split(url, default_port=4840)
    q = query(parts, url, {"serve", "map"} | CLIENT_KEYS | SERVER_KEYS)
    shown = redact(url)
    if ("serve" in q) == ("map" in q):
        raise SinkError(f"--publish {shown}: say which role: opc.tcp://0.0.0.0:4840?serve (the runtime's own "
                        "server) or opc.tcp://plc:4840?map=nodes.json (write into a PLC's nodes)")
    if "serve" in q:
        if q["serve"]:
            raise SinkError(f"--publish {shown}: ?serve takes no value")
        for k in ("server_cert", "login"):
            if k in q:
                raise SinkError(f"--publish {shown}: {k}= is a client option (not for ?serve)")
        return OpcUaServerSink(shown, parts.hostname, parts.port or 4840,
                               security_options(parts, q, f"--publish {shown}", server=True))
    if not q["map"]:
        raise SinkError(f"--publish {shown}: ?map= needs the mapping file")
    if "trust" in q:
        raise SinkError(f"--publish {shown}: trust= is a server option (?serve)")
    return OpcUaClientSink(shown, url, Path(q["map"]), security_options(parts, q, f"--publish {shown}", server=False))
