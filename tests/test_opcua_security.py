"""The runtime's own OPC UA server with Basic256Sha256 security, against plain asyncua clients
holding no, wrong and right credentials; and the client role logging into a secured "PLC".
Certificates are made in the test with openssl (tests/certs.py), never committed."""

from __future__ import annotations

import socket
import threading

import pytest

pytest.importorskip("asyncua")

from runtime.line.sinks.base import SinkError  # noqa: E402
from runtime.line.sinks.delivery import Publisher  # noqa: E402
from runtime.line.sinks.table import make_sink  # noqa: E402

from .certs import opcua_cert  # noqa: E402
from .line_servers import free_port, wait_for  # noqa: E402

MARKER = "r-secret-marker-4711"


class Tap:
    """A TCP relay on loopback that keeps every byte it relays (what a sniffer on the cell network sees)."""

    def __init__(self, target_port: int):
        self.target, self.seen = target_port, bytearray()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.sock.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(x, y), daemon=True).start()

    def _pipe(self, src, dst):
        try:
            while data := src.recv(65536):
                self.seen += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


def _client(port, certs, user=None, password=None, security=True, login_cert=None):
    from asyncua import ua
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
    from asyncua.sync import Client

    c = Client(f"opc.tcp://127.0.0.1:{port}/", timeout=4)
    c.aio_obj.application_uri = "urn:test:client"
    if user:
        c.set_user(user)
        c.set_password(password)
    if security:
        c.set_security(SecurityPolicyBasic256Sha256, str(certs["client"][0]), str(certs["client"][1]),
                       mode=ua.MessageSecurityMode.SignAndEncrypt)
    if login_cert:
        c.load_client_certificate(str(login_cert[0]))
        c.load_private_key(str(login_cert[1]))
    return c


def _read(c):
    ns = c.get_namespace_index("urn:patchcore-rt:vision")
    vs = c.nodes.objects.get_child([f"{ns}:VisionSystem"])
    return {n.read_browse_name().Name: n.read_value() for n in vs.get_children()}


def _refused(c) -> str:
    try:
        c.connect()
    except Exception as e:  # noqa: BLE001 - asyncua raises the server's status code or a timeout
        try:
            c.tloop.stop()
        except Exception:  # noqa: BLE001
            pass
        return type(e).__name__ + str(e)
    c.disconnect()
    raise AssertionError("the server accepted the session")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    return {"server": opcua_cert(d, "server", "urn:patchcore-rt:server"),
            "client": opcua_cert(d, "client", "urn:test:client"),
            "other": opcua_cert(d, "other", "urn:test:client")}


def test_secured_server_refuses_anonymous_and_wrong_password_accepts_right_and_encrypts(tmp_path, certs, monkeypatch):
    monkeypatch.setenv("VISION_PW", "right-pw")
    port = free_port()
    url = (f"opc.tcp://line@127.0.0.1:{port}?serve&security=encrypt&cert={certs['server'][0]}"
           f"&key={certs['server'][1]}&password_env=VISION_PW&trust={certs['client'][0]}")
    tap = Tap(port)
    with Publisher([url], tmp_path, print) as pub:
        pub.publish({"id": MARKER, "file": "a.png", "score": 4.5, "normalised": 0.75, "verdict": "ng"})
        wait_for(lambda: pub.stats()[0].delivered == 1, 10, "the result on the server")
        # no security at all, even with the right password: the server offers no unsecured endpoint
        plain = _refused(_client(port, certs, "line", "right-pw", security=False))
        assert "No matching endpoints" in plain and "SecurityPolicy#None" in plain, plain
        anon = _refused(_client(port, certs))
        assert "BadIdentityTokenRejected" in anon or "IdentityToken" in anon, anon
        wrong = _refused(_client(port, certs, "line", "wrong-pw"))
        assert "BadUserAccessDenied" in wrong, wrong
        assert "BadUserAccessDenied" in _refused(_client(port, certs, "someone", "right-pw"))
        # a certificate login with a certificate not in trust=
        assert "BadUserAccessDenied" in _refused(_client(port, certs, login_cert=certs["other"]))
        c = _client(tap.port, certs, "line", "right-pw")
        c.connect()
        try:
            read = _read(c)
            policy = c.aio_obj.security_policy
            assert policy.URI.endswith("#Basic256Sha256")
            from asyncua import ua

            assert policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
        finally:
            c.disconnect()
        c = _client(port, certs, login_cert=certs["client"])  # the trusted certificate logs in
        c.connect()
        try:
            assert _read(c)["ResultId"] == MARKER
        finally:
            c.disconnect()
    tap.close()
    assert read["ResultId"] == MARKER and read["Verdict"] == "ng" and read["ResultCounter"] == 1
    # what crossed the wire: the result id and the password were encrypted
    assert len(tap.seen) > 1000
    assert MARKER.encode() not in tap.seen and b"right-pw" not in tap.seen


def test_unsecured_server_is_readable_in_clear(tmp_path):
    """The control for the test above: without security= the same value crosses the wire in clear."""
    from asyncua.sync import Client

    port = free_port()
    tap = Tap(port)
    with Publisher([f"opc.tcp://127.0.0.1:{port}?serve"], tmp_path, print) as pub:
        pub.publish({"id": MARKER, "file": "a.png", "score": 4.5, "normalised": 0.75, "verdict": "ng"})
        wait_for(lambda: pub.stats()[0].delivered == 1, 10, "the result on the server")
        c = Client(f"opc.tcp://127.0.0.1:{tap.port}/", timeout=4)
        c.connect()
        try:
            assert _read(c)["ResultId"] == MARKER
        finally:
            c.disconnect()
    tap.close()
    assert MARKER.encode() in tap.seen


def test_client_sink_logs_into_a_secured_server(tmp_path, certs, monkeypatch):
    """The client role (a PLC's server, here the runtime's own secured server) with security and a
    password from a file: a wrong password is exit 2 at start, the right one connects."""
    monkeypatch.setenv("VISION_PW", "right-pw")
    port = free_port()
    server = (f"opc.tcp://line@127.0.0.1:{port}?serve&security=encrypt&cert={certs['server'][0]}"
              f"&key={certs['server'][1]}&password_env=VISION_PW")
    mapping = tmp_path / "nodes.json"
    mapping.write_text('{"nodes": {"result_id": "ns=2;s=VisionSystem.ResultId"}}')
    pw = tmp_path / "pw"
    with Publisher([server], tmp_path / "srv", print):
        for secret, ok in (("wrong-pw", False), ("right-pw", True)):
            pw.write_text(secret + "\n")
            client = (f"opc.tcp://line@127.0.0.1:{port}?map={mapping}&security=encrypt&cert={certs['client'][0]}"
                      f"&key={certs['client'][1]}&password_file={pw}&server_cert={certs['server'][0]}")
            sink = make_sink(client)
            if ok:
                # the runtime's own variables are read-only: reaching the node check means the session was made
                with pytest.raises(SinkError, match="not writable"):
                    sink.open()
            else:
                with pytest.raises(SinkError, match="cannot connect") as e:
                    sink.open()
                assert secret not in str(e.value)


@pytest.mark.parametrize("query,says", [
    ("serve&security=encrypt", "needs cert=PATH and key=PATH"),
    ("serve&security=aes", "give security=sign or security=encrypt"),
    ("serve&security=encrypt&cert={cert}&key={key}", "anonymous sessions are refused"),
    ("serve&password_env=HOME", "refusing to send a password unencrypted"),
    ("serve&security=encrypt&cert={cert}&key={cert}&password_env=HOME", "not an unencrypted PEM private key"),
    ("serve&security=encrypt&cert={key}&key={key}&password_env=HOME", "is not an X.509 certificate"),
    ("serve&security=encrypt&cert=/nonexistent.pem&key={key}", "cert=/nonexistent.pem: no such file"),
    ("serve&password_env=NOT_SET_ANYWHERE_44", "that environment variable is not set"),
    ("map=x.json&login=user", "the only value is login=cert"),
])
def test_bad_security_options_are_one_line(certs, query, says):
    url = f"opc.tcp://line@127.0.0.1:{free_port()}?" + query.format(cert=certs["server"][0], key=certs["server"][1])
    with pytest.raises(SinkError, match=says.replace("(", r"\(").replace(")", r"\)")):
        make_sink(url)


def test_plaintext_password_allowed_when_told(tmp_path):
    sink = make_sink(f"opc.tcp://line:pw@127.0.0.1:{free_port()}?serve&allow_plaintext=1")
    assert sink.sec.password == "pw" and sink.sec.mode is None and "pw" not in sink.url


def test_sign_only_server(tmp_path, certs):
    """security=sign: Basic256Sha256 with Sign, the right password accepted, the session signed."""
    from asyncua import ua
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
    from asyncua.sync import Client

    pw = tmp_path / "pw"
    pw.write_text("right-pw\n")
    port = free_port()
    url = (f"opc.tcp://line@127.0.0.1:{port}?serve&security=sign&cert={certs['server'][0]}"
           f"&key={certs['server'][1]}&password_file={pw}")
    with Publisher([url], tmp_path / "out", print):
        c = Client(f"opc.tcp://127.0.0.1:{port}/", timeout=4)
        c.aio_obj.application_uri = "urn:test:client"
        c.set_user("line")
        c.set_password("right-pw")
        c.set_security(SecurityPolicyBasic256Sha256, str(certs["client"][0]), str(certs["client"][1]),
                       mode=ua.MessageSecurityMode.Sign)
        c.connect()
        try:
            assert c.aio_obj.security_policy.Mode == ua.MessageSecurityMode.Sign
            assert _read(c)["State"] == "Operational"
        finally:
            c.disconnect()
        # the server offers Sign only: a client asking for SignAndEncrypt finds no endpoint
        c = Client(f"opc.tcp://127.0.0.1:{port}/", timeout=4)
        try:
            with pytest.raises(ua.UaError, match="No matching endpoints"):
                c.set_security(SecurityPolicyBasic256Sha256, str(certs["client"][0]), str(certs["client"][1]),
                               mode=ua.MessageSecurityMode.SignAndEncrypt)
        finally:
            c.tloop.stop()


def test_opcua_trigger_takes_the_client_security_options(tmp_path, certs, monkeypatch):
    """The OPC UA trigger logs into a secured server with the client sink's options: the wrong
    password cannot connect; the right one gets a session (and finds the read-only nodes)."""
    from runtime.line.triggers import make_trigger

    monkeypatch.setenv("VISION_PW", "right-pw")
    port = free_port()
    server = (f"opc.tcp://line@127.0.0.1:{port}?serve&security=encrypt&cert={certs['server'][0]}"
              f"&key={certs['server'][1]}&password_env=VISION_PW")
    mapping = tmp_path / "handshake.json"
    mapping.write_text('{"nodes": {"ready": "ns=2;s=VisionSystem.IsOk"}}')
    with Publisher([server], tmp_path / "srv", print):
        for env, says in (("wrong-pw", "cannot connect to the PLC"), ("right-pw", "not writable")):
            monkeypatch.setenv("TRIGGER_PW", env)
            url = (f"opc.tcp://line@127.0.0.1:{port}?map={mapping}&security=encrypt&cert={certs['client'][0]}"
                   f"&key={certs['client'][1]}&password_env=TRIGGER_PW#ns=2;s=VisionSystem.IsNg")
            with pytest.raises(SinkError, match=says) as e:
                make_trigger(url).open()
            assert env not in str(e.value) and e.value.exit_code == 2


def test_clients_lists_the_application_certificates_that_may_open_a_session(tmp_path, certs, monkeypatch):
    """clients=: a client whose application certificate is not listed is refused even with the
    right password; a listed one gets in."""
    monkeypatch.setenv("VISION_PW", "right-pw")
    port = free_port()
    url = (f"opc.tcp://line@127.0.0.1:{port}?serve&security=encrypt&cert={certs['server'][0]}"
           f"&key={certs['server'][1]}&password_env=VISION_PW&clients={certs['client'][0]}")
    other = {"client": certs["other"]}
    with Publisher([url], tmp_path / "out", print):
        refused = _refused(_client(port, other, "line", "right-pw"))
        assert "BadCertificateUntrusted" in refused, refused
        c = _client(port, certs, "line", "right-pw")
        c.connect()
        try:
            assert _read(c)["State"] == "Operational"
        finally:
            c.disconnect()
    with pytest.raises(SinkError, match="clients= needs security="):
        make_sink(f"opc.tcp://127.0.0.1:{free_port()}?serve&clients={certs['client'][0]}")
