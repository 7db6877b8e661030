"""MQTT over TLS (``mqtts://``) against a real mosquitto TLS listener, with a CA, a broker
certificate and a client certificate made in the test (openssl, tests/certs.py): every record
once across a broker restart; an untrusted broker, a missing client certificate and a plaintext
password are exit 2 at start."""

from __future__ import annotations

import json
import subprocess

import pytest

pytest.importorskip("paho.mqtt")

from runtime.line.sinks.base import SinkError  # noqa: E402
from runtime.line.sinks.delivery import Publisher  # noqa: E402
from runtime.line.sinks.table import make_sink  # noqa: E402

from .certs import ca, signed  # noqa: E402
from .line_servers import Mosquitto, Subscriber, free_port, wait_for  # noqa: E402


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    authority = ca(d)
    other = ca(d / "other")
    return {"ca": authority[0], "broker": signed(d, "broker", authority), "client": signed(d, "client", authority),
            "other_ca": other[0]}


def test_mqtts_delivers_every_record_once_across_a_broker_restart(tmp_path, pki):
    broker = Mosquitto(tmp_path / "broker", tls=(pki["ca"], *pki["broker"]), require_certificate=True).start()
    sub = Subscriber(broker.port, "cell/#", tls=(pki["ca"], *pki["client"]))
    url = (f"mqtts://127.0.0.1:{broker.port}/cell?ca={pki['ca']}&cert={pki['client'][0]}&key={pki['client'][1]}"
           "&client_id=runtime-tls")
    recs = [{"id": f"r{i:02d}", "file": f"{i}.png", "score": 1.0, "normalised": 0.2, "verdict": "ok"}
            for i in range(20)]

    def ids():
        return list(dict.fromkeys(json.loads(p)["id"] for t, p, _ in sub.messages if t == "cell/result"))

    pub = Publisher([url], tmp_path / "out", print).open()
    try:
        wait_for(lambda: sub.client.is_connected(), 10, "the subscriber")
        for r in recs[:8]:
            pub.publish(dict(r))
        wait_for(lambda: len(ids()) == 8, 20, "8 results over TLS")
        broker.stop()  # mid-run: the next results wait in the outbox
        for r in recs[8:14]:
            pub.publish(dict(r))
        wait_for(lambda: pub.stats()[0].state == "down", 20, "the sink to report down")
        assert len(ids()) == 8
        broker.start()
        for r in recs[14:]:
            pub.publish(dict(r))
        wait_for(lambda: len(ids()) == 20, 60, "20 results over TLS after the broker came back")
        wait_for(lambda: pub.stats()[0].pending == 0, 10, "an empty outbox")
        assert pub.stats()[0].delivered == 20
    finally:
        pub.close(5)
        sub.close()
        broker.stop()
    assert ids() == [r["id"] for r in recs]  # each once (repeats dropped by id), in order
    raw = [json.loads(p)["id"] for t, p, _ in sub.messages if t == "cell/result"]
    assert set(raw) == {r["id"] for r in recs}


@pytest.mark.parametrize("case,says", [
    ("no_ca", "the broker's certificate is not trusted"),
    ("other_ca", "the broker's certificate is not trusted"),
    ("no_client_cert", "TLS handshake with the broker failed"),
])
def test_tls_failures_are_exit_2_at_start(tmp_path, pki, case, says):
    with Mosquitto(tmp_path / "broker", tls=(pki["ca"], *pki["broker"]), require_certificate=True) as broker:
        q = {"no_ca": f"cert={pki['client'][0]}&key={pki['client'][1]}",
             "other_ca": f"ca={pki['other_ca']}&cert={pki['client'][0]}&key={pki['client'][1]}",
             "no_client_cert": f"ca={pki['ca']}"}[case]
        with pytest.raises(SinkError, match=says) as e:
            Publisher([f"mqtts://127.0.0.1:{broker.port}/cell?{q}"], tmp_path / "out", print).open()
        assert e.value.exit_code == 2 and "\n" not in str(e.value)


def test_password_over_tls_from_a_file(tmp_path, pki):
    pwfile = tmp_path / "passwd"
    pwfile.write_text("")
    if subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "line", "right"], capture_output=True).returncode:
        pytest.skip("mosquitto_passwd not available")
    secret = tmp_path / "secret"
    with Mosquitto(tmp_path / "broker", password_file=pwfile, tls=(pki["ca"], *pki["broker"])) as broker:
        for pw, ok in (("wrong", False), ("right", True)):
            secret.write_text(pw + "\n")
            url = f"mqtts://line@127.0.0.1:{broker.port}/cell?ca={pki['ca']}&password_file={secret}"
            pub = Publisher([url], tmp_path / "out", print)
            if ok:
                with pub:
                    pub.publish({"id": "x1", "file": "a.png", "verdict": "ok"})
                    wait_for(lambda: pub.stats()[0].delivered == 1, 10, "a result")
            else:
                with pytest.raises(SinkError, match="refused") as e:
                    pub.open()
                assert "wrong" not in str(e.value)


@pytest.mark.parametrize("url,says", [
    ("mqtt://line:pw@127.0.0.1:{port}/cell", "refusing to send a password unencrypted; use mqtts://"),
    ("mqtt://line@127.0.0.1:{port}/cell?password_env=HOME", "refusing to send a password unencrypted"),
    ("mqtt://127.0.0.1:{port}/cell?ca=/etc/hostname", "ca= is for TLS: use mqtts://"),
    ("mqtts://127.0.0.1:{port}/cell?cert=/etc/hostname", "needs both cert=PATH and key=PATH"),
    ("mqtts://127.0.0.1:{port}/cell?ca=/nonexistent", "ca=/nonexistent: no such file"),
    ("mqtt://line:pw@127.0.0.1:{port}/cell?allow_plaintext=maybe", "allow_plaintext takes 1 or 0"),
])
def test_bad_mqtt_security_urls(url, says):
    with pytest.raises(SinkError, match=says.replace("(", r"\(")) as e:
        make_sink(url.format(port=free_port()))
    assert "pw@" not in str(e.value)


def test_plaintext_allowed_when_told():
    assert make_sink(f"mqtt://line:pw@127.0.0.1:{free_port()}/cell?allow_plaintext=1").cfg.password == "pw"


def test_cli_refuses_a_plaintext_password_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from runtime.cli.app import app

    res = CliRunner().invoke(app, ["camera", "0", "--bundle", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                                   "--publish", f"mqtt://line:s3cret@127.0.0.1:{free_port()}/cell"])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "refusing to send a password unencrypted" in errors[0], res.output
    assert "s3cret" not in res.output and "Traceback" not in res.output


def test_mqtt_trigger_over_tls(tmp_path, pki):
    """The MQTT trigger takes the sink's TLS options: the right CA and client certificate connect,
    another CA is exit 2 at start."""
    from runtime.line.triggers import make_trigger

    with Mosquitto(tmp_path / "broker", tls=(pki["ca"], *pki["broker"]), require_certificate=True) as broker:
        base = f"mqtts://127.0.0.1:{broker.port}/cell?cert={pki['client'][0]}&key={pki['client'][1]}"
        t = make_trigger(f"{base}&ca={pki['ca']}")
        t.open()
        try:
            assert t.raised() is False
        finally:
            t.close()
        with pytest.raises(SinkError, match="not trusted"):
            make_trigger(f"{base}&ca={pki['other_ca']}").open()
