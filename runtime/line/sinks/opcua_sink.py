"""``opc.tcp://...``: OPC UA (asyncua), in either role.

* ``opc.tcp://0.0.0.0:4840?serve``: the runtime is an OPC UA **server** (as OPC 40100 has the
  vision system): ``Objects/VisionSystem`` with the result model of :mod:`.opcua_model` as
  variables (node ids ``ns=<urn:patchcore-rt:vision>;s=VisionSystem.<Name>``), which a PLC or an
  MES reads or subscribes to; ``ResultCounter`` is written last, so a subscription to it sees a
  whole result. Anonymous, no message security (put it on a cell network, or use the client role
  with a PLC's security). A port that cannot be bound is exit 2 at start.
* ``opc.tcp://plc:4840?map=nodes.json``: the runtime is a **client** writing each result into a
  PLC's own nodes, named in a mapping file (``{"nodes": {"verdict": "ns=3;s=\\"DB_Vision\\".Verdict",
  ...}}``, keys from the model: ``result_id part_id score normalised verdict ok ng bundle_id
  time counter``). Each value is converted to the node's own data type (a float score into an
  integer node is written in thousandths); ``counter`` is written last. At start the PLC must be
  reachable and every node must exist and be writable (exit 2 otherwise: one line naming the
  node); later, a PLC that goes away is a logged state change and its results wait.
  Credentials: ``$PATCHCORE_RT_OPCUA_USERNAME`` / ``$PATCHCORE_RT_OPCUA_PASSWORD``; security:
  ``$PATCHCORE_RT_OPCUA_SECURITY`` in asyncua's form (``Basic256Sha256,SignAndEncrypt,cert.pem,key.pem``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from . import opcua_model as model
from .base import SinkDown, SinkError, need, query, redact, split

ENV = "PATCHCORE_RT_OPCUA"
NAMESPACE = "urn:patchcore-rt:vision"
TIMEOUT_S = 4.0


def _quiet() -> None:
    """asyncua logs every fallback (no signing policy, a revised session timeout) as a warning; the
    runtime's log says what matters itself."""
    logging.getLogger("asyncua").setLevel(logging.ERROR)


def connect_client(raw: str, shown: str):
    """A connected asyncua sync client, with credentials and security from the environment."""
    need("asyncua", "line", raw)
    _quiet()
    from asyncua.sync import Client

    parts = split(raw, default_port=4840, fragment=True)
    url = f"opc.tcp://{parts.hostname}:{parts.port or 4840}{parts.path}"
    c = Client(url, timeout=TIMEOUT_S)
    user = os.environ.get(f"{ENV}_USERNAME") or parts.username
    if user:
        c.set_user(user)
        c.set_password(os.environ.get(f"{ENV}_PASSWORD") or parts.password or "")
    sec = os.environ.get(f"{ENV}_SECURITY")
    if sec:
        try:
            c.set_security_string(sec)
        except Exception as e:  # noqa: BLE001 - asyncua raises several kinds for a bad certificate
            c.tloop.stop()
            raise SinkError(f"{shown}: ${ENV}_SECURITY: {e}") from None
    try:
        c.connect()
    except Exception as e:  # noqa: BLE001 - refused, timeout, bad credentials, security
        try:
            c.tloop.stop()
        except Exception:  # noqa: BLE001
            pass
        raise ConnectionError(f"{type(e).__name__}: {e}".rstrip(": ")) from None
    return c


def close_client(c) -> None:
    try:
        c.disconnect()
    except Exception:  # noqa: BLE001 - the connection is gone already
        try:
            c.tloop.stop()
        except Exception:  # noqa: BLE001
            pass


def load_mapping(path: Path, shown: str, allowed: tuple[str, ...] = model.KEYS) -> dict[str, str]:
    """The mapping file's ``nodes``: model key -> node id. SinkError for a file that is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SinkError(f"{shown}: mapping file {path} not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SinkError(f"{shown}: mapping file {path} is not JSON ({e})") from None
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, dict) or not nodes:
        raise SinkError(f"{shown}: mapping file {path} needs {{\"nodes\": {{\"verdict\": \"ns=3;s=...\", ...}}}}")
    for k, v in nodes.items():
        if k not in allowed:
            raise SinkError(f"{shown}: mapping file {path}: unknown key {k!r} (known: {', '.join(allowed)})")
        if not isinstance(v, str) or not v:
            raise SinkError(f"{shown}: mapping file {path}: {k} must be a node id string like \"ns=3;s=Cell.Verdict\"")
    return dict(nodes)


def resolve_nodes(client, mapping: dict[str, str], shown: str) -> dict[str, tuple[Any, Any]]:
    """key -> (node, its variant type); SinkError naming a node that does not exist or is not writable."""
    from asyncua import ua

    out = {}
    for key, nodeid in mapping.items():
        try:
            node = client.get_node(nodeid)
            vtype = node.read_data_type_as_variant_type()
            access = node.read_attribute(ua.AttributeIds.UserAccessLevel).Value.Value
        except ua.UaStatusCodeError as e:
            raise SinkError(f"{shown}: node {nodeid} ({key}) does not exist on the PLC "
                            f"({type(e).__name__})") from None
        except (ValueError, ua.UaError) as e:
            raise SinkError(f"{shown}: node id {nodeid!r} ({key}) is not a valid OPC UA node id ({e})") from None
        if access is not None and not int(access) & int(ua.AccessLevel.CurrentWrite.mask):
            raise SinkError(f"{shown}: node {nodeid} ({key}) is not writable by this user")
        out[key] = (node, vtype)
    return out


def write_nodes(nodes: dict[str, tuple[Any, Any]], vals: dict[str, Any]) -> None:
    """Write the mapped values, ``counter`` last."""
    from asyncua import ua

    for key in sorted(nodes, key=lambda k: k == "counter"):
        node, vtype = nodes[key]
        node.write_value(ua.DataValue(ua.Variant(model.convert(vals[key], vtype), vtype)))


class OpcUaClientSink:
    def __init__(self, url: str, raw: str, mapping_path: Path):
        self.url, self.raw, self.mapping_path = url, raw, mapping_path
        self.mapping = load_mapping(mapping_path, f"--publish {url}")
        self.client = None
        self.nodes: dict[str, tuple[Any, Any]] = {}
        self.counter = 0

    def open(self) -> None:
        shown = f"--publish {self.url}"
        try:
            self.client = connect_client(self.raw, shown)
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
                self.client = connect_client(self.raw, self.url)
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
    def __init__(self, url: str, host: str, port: int):
        self.url, self.host, self.port = url, host, port
        self.server = None
        self.vars: dict[str, Any] = {}
        self.counter = 0

    def open(self) -> None:
        need("asyncua", "line", self.url)
        _quiet()
        from asyncua import ua
        from asyncua.sync import Server

        server = Server()
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}/")
        server.set_server_name("patchcore-rt")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
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
    q = query(parts, url, {"serve", "map"})
    shown = redact(url)
    if ("serve" in q) == ("map" in q):
        raise SinkError(f"--publish {shown}: say which role: opc.tcp://0.0.0.0:4840?serve (the runtime's own "
                        "server) or opc.tcp://plc:4840?map=nodes.json (write into a PLC's nodes)")
    if "serve" in q:
        if q["serve"]:
            raise SinkError(f"--publish {shown}: ?serve takes no value")
        return OpcUaServerSink(shown, parts.hostname, parts.port or 4840)
    if not q["map"]:
        raise SinkError(f"--publish {shown}: ?map= needs the mapping file")
    return OpcUaClientSink(shown, url, Path(q["map"]))
