"""Real servers for the result-sink tests, on free loopback ports: a mosquitto broker (the Debian
package) and a throwaway PostgreSQL cluster. Each skips the test with the reason when its program
is absent (fails under CI=true: tests/capabilities.py), and each is stopped by the test that started it."""

from __future__ import annotations

import getpass
import glob
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.capabilities import require


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def wait_for(cond, timeout: float, what: str) -> None:
    """Poll ``cond`` until it is true; AssertionError naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Mosquitto:
    """A mosquitto broker with persistence (a restart keeps queued QoS 1 messages)."""

    def __init__(self, folder: Path, port: int | None = None, password_file: Path | None = None,
                 tls: tuple[Path, Path, Path] | None = None, require_certificate: bool = False,
                 nodelay: bool = True):
        """``tls``: (CA, server certificate, server key) makes the listener TLS only; with
        ``require_certificate`` a client must present a certificate the CA signed."""
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
        require("mosquitto", None if exe else "mosquitto not installed")
        self.exe, self.folder, self.port = exe, folder, port or free_port()
        folder.mkdir(parents=True, exist_ok=True)
        auth = f"allow_anonymous false\npassword_file {password_file}\n" if password_file else "allow_anonymous true\n"
        self.conf = folder / "mosquitto.conf"
        if tls:
            auth += (f"cafile {tls[0]}\ncertfile {tls[1]}\nkeyfile {tls[2]}\n"
                     f"require_certificate {'true' if require_certificate else 'false'}\n")
        if nodelay:  # as docs/line-systems.md advises for a broker that carries triggers
            auth += "set_tcp_nodelay true\n"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\n{auth}persistence true\n"
                             f"persistence_location {folder}/\nuser {getpass.getuser()}\nlog_dest none\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Mosquitto":
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        """SIGTERM: the broker saves its queues and exits (a restart, as a service manager does)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Subscriber:
    """An MQTT subscriber with a persistent session (QoS 1), collecting payloads in arrival order."""

    def __init__(self, port: int, topic: str, client_id: str = "test-subscriber",
                 tls: tuple[Path, Path | None, Path | None] | None = None):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []  # (topic, payload, retained)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                        protocol=mqtt.MQTTv311)
        c.on_connect = lambda cl, ud, fl, rc, pr=None: cl.subscribe(topic, qos=1)
        c.on_message = lambda cl, ud, m: self.messages.append((m.topic, m.payload, bool(m.retain)))
        if tls:
            c.tls_set(ca_certs=str(tls[0]), certfile=tls[1] and str(tls[1]), keyfile=tls[2] and str(tls[2]))
        c.reconnect_delay_set(0.1, 0.5)
        c.connect_async("127.0.0.1", port, keepalive=10)
        c.loop_start()
        self.client = c

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return cands[-1] if cands else None


class Postgres:
    """A throwaway PostgreSQL cluster: initdb in a temporary folder, a free loopback port. PostgreSQL
    refuses to run as root, so as root the cluster belongs to the user ``nobody``."""

    def __init__(self):
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        require("postgresql", None if self.initdb and self.pg_ctl else "PostgreSQL's initdb/pg_ctl not found")
        # its own folder under the system's temporary folder: pytest keeps its own private (0700, reset by
        # every pytest run), which the user nobody could not reach
        import tempfile

        self.folder, self.port = Path(tempfile.mkdtemp(prefix="patchcore-pg-")), free_port()
        self.data = self.folder / "data"
        self.as_user: list[str] = []
        self.user = getpass.getuser()
        if os.geteuid() == 0:
            self.as_user, self.user = ["runuser", "-u", "nobody", "--"], "nobody"

    def _run(self, args: list[str]) -> None:
        r = subprocess.run(self.as_user + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           timeout=60)
        if r.returncode:
            raise RuntimeError(f"{' '.join(args[:1])} failed: {r.stderr.strip()[-500:]}")

    def start(self) -> "Postgres":
        if self.as_user:
            shutil.chown(self.folder, "nobody")
        self._run([self.initdb, "-D", str(self.data), "-A", "trust", "-U", self.user, "--no-sync"])
        self._run([self.pg_ctl, "-D", str(self.data), "-w", "-l", str(self.folder / "log"), "-o",
                   f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
        return self

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        except (RuntimeError, FileNotFoundError):
            pass
        shutil.rmtree(self.folder, ignore_errors=True)


class ModbusPlc:
    """A pymodbus TCP server in this process standing in for a PLC: unit 1 with 100 coils and 100
    holding registers from address 0, on a free loopback port, in its own thread."""

    def __init__(self, port: int | None = None, size: int = 100):
        import asyncio
        import threading

        from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext

        self.port = port or free_port()
        device = ModbusDeviceContext(co=ModbusSequentialDataBlock(1, [False] * size),  # 1: pymodbus adds one
                                     hr=ModbusSequentialDataBlock(1, [0] * size))
        self.context = ModbusServerContext(devices={1: device}, single=False)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = None

    def start(self) -> "ModbusPlc":
        import asyncio

        from pymodbus.server import ModbusTcpServer

        if not self.thread.is_alive():
            self.thread.start()

        async def up():
            self.server = ModbusTcpServer(self.context, address=("127.0.0.1", self.port))
            asyncio.ensure_future(self.server.serve_forever())

        asyncio.run_coroutine_threadsafe(up(), self.loop).result(10)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        import asyncio

        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(10)
            self.server = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def read(self, coils: int = 2, registers: int = 4, coil: int = 0, register: int = 0):
        """(coils, registers) as the PLC holds them, read over Modbus TCP like any client."""
        from pymodbus.client import ModbusTcpClient

        c = ModbusTcpClient("127.0.0.1", port=self.port, timeout=2)
        try:
            assert c.connect()
            co = c.read_coils(coil, count=coils, device_id=1).bits[:coils]
            hr = c.read_holding_registers(register, count=registers, device_id=1).registers
            return [bool(b) for b in co], list(hr)
        finally:
            c.close()


class OpcUaPlc:
    """An asyncua server in this process standing in for a PLC: writable variables
    ``ns=2;s=Cell.<Name>`` (Trigger, Ready, PartIn, PartId, Verdict, Score, Normalised, Counter,
    Ok, ResultId), on a free loopback port."""

    VARS = {"Trigger": ("Boolean", False), "Ready": ("Boolean", False), "PartIn": ("String", ""),
            "PartId": ("String", ""), "Verdict": ("String", ""), "Score": ("Float", 0.0),
            "Normalised": ("Int16", 0), "Counter": ("UInt32", 0), "Ok": ("Boolean", False), "ResultId": ("String", "")}

    def __init__(self, port: int | None = None):
        from asyncua import ua
        from asyncua.sync import Server

        self.port = port or free_port()
        self.url = f"opc.tcp://127.0.0.1:{self.port}"
        s = Server()
        s.set_endpoint(f"{self.url}/")
        s.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        ns = s.register_namespace("urn:test:plc")
        assert ns == 2
        cell = s.nodes.objects.add_object(ua.NodeId("Cell", 2), "Cell")
        self.nodes = {}
        for name, (vt, initial) in self.VARS.items():
            v = cell.add_variable(ua.NodeId(f"Cell.{name}", 2), name, ua.Variant(initial, getattr(ua.VariantType, vt)))
            v.set_writable()
            self.nodes[name] = v
        self.server = s

    def node(self, name: str) -> str:
        return f"ns=2;s=Cell.{name}"

    def get(self, name: str):
        return self.nodes[name].read_value()

    def set(self, name: str, value) -> None:
        from asyncua import ua

        vt = getattr(ua.VariantType, self.VARS[name][0])
        self.nodes[name].write_value(ua.DataValue(ua.Variant(value, vt)))

    def __enter__(self) -> "OpcUaPlc":
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()
