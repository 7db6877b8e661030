"""``opc.tcp://plc:4840?map=nodes.json#<trigger node id>``: the trigger on a PLC's OPC UA server.

The mapping file names the result nodes as for ``--publish`` plus ``ready`` (required),
``part_in`` (optional: a string the PLC sets before the trigger, the record's part id) and
``product_in`` (optional: the product of the part). Security and login options as for the client
sink (:mod:`runtime.line.sinks.opcua_conn`: ``security=``, ``cert=``, ``key=``, ``password_file=``...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..sinks import opcua_conn as conn
from ..sinks import opcua_model as model
from ..sinks.base import SinkError, query, redact, split
from . import TriggerBase, TriggerEvent


class OpcUaTrigger(TriggerBase):
    def __init__(self, url: str):
        self.raw, self.url = url, redact(url)
        shown = f"--trigger {self.url}"
        parts = split(url, default_port=4840, fragment=True, role="--trigger")
        q = query(parts, url, {"map"} | conn.CLIENT_KEYS, role="--trigger")
        self.trigger_node = parts.fragment
        if not self.trigger_node or not q.get("map"):
            raise SinkError(f"{shown}: give opc.tcp://plc:4840?map=nodes.json#<trigger node id>")
        self.sec = conn.security_options(parts, q, shown, server=False)
        self.mapping = conn.load_mapping(Path(q["map"]), shown, model.KEYS + ("ready", "part_in", "product_in"))
        if "ready" not in self.mapping:
            raise SinkError(f"{shown}: the mapping file must name the \"ready\" node")
        self.client = None
        self.counter = 0
        self.inputs: dict[str, Any] = {}

    def open(self) -> None:
        shown = f"--trigger {self.url}"
        try:
            self.client = conn.connect_client(self.raw, shown, self.sec)
        except ConnectionError as e:
            raise SinkError(f"{shown}: cannot connect to the PLC ({e})") from None
        key = None
        try:
            writable = {k: v for k, v in self.mapping.items() if k not in ("part_in", "product_in")}
            self.nodes = conn.resolve_nodes(self.client, writable, shown)
            self.trigger = conn.resolve_nodes(self.client, {"trigger": self.trigger_node}, shown)["trigger"]
            self.inputs = {}
            for key in ("part_in", "product_in"):
                if key in self.mapping:
                    self.inputs[key] = self.client.get_node(self.mapping[key])
                    self.inputs[key].read_value()
            self.ready = self.nodes.pop("ready")
            if "counter" in self.nodes:
                self.counter = int(self.nodes["counter"][0].read_value() or 0)
        except SinkError:
            self.close()
            raise
        except Exception as e:  # noqa: BLE001 - the part_in / product_in node
            self.close()
            raise SinkError(f"{shown}: node {self.mapping.get(key)} ({key}) cannot be read ({e})") from None

    def raised(self) -> bool:
        return bool(self.trigger[0].read_value())

    def begin(self) -> TriggerEvent:
        conn.write_value(self.ready, False)
        got = {k: n.read_value() for k, n in self.inputs.items()}
        return TriggerEvent(*(None if got.get(k) in (None, "") else str(got[k]) for k in ("part_in", "product_in")))

    def finish(self, record: dict[str, Any]) -> None:
        conn.write_nodes(self.nodes, model.values(record, str(record.get("id", "")), self.counter + 1))
        self.counter += 1
        conn.write_value(self.ready, True)
        conn.write_value(self.trigger, False)

    def close(self) -> None:
        c, self.client = self.client, None
        if c is not None:
            conn.close_client(c)


def make(url: str) -> OpcUaTrigger:
    return OpcUaTrigger(url)
