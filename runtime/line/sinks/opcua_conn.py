"""OPC UA connections and their security, shared by the ``opc.tcp://`` sink (both roles) and the
OPC UA trigger: connecting a client, the mapping file of a PLC's nodes, writing values in the
nodes' own types, and the security options.

Security options (in the URL's query, the same for server and client):

* ``security=sign`` or ``security=encrypt``: Basic256Sha256 with Sign or SignAndEncrypt message
  security; ``cert=PATH`` and ``key=PATH`` are this side's application certificate (PEM or DER)
  and private key (PEM). Without ``security=`` the connection is unsecured (SecurityPolicy None).
* Client: ``server_cert=PATH`` pins the server's certificate (otherwise the one its endpoint
  offers is taken); ``login=cert`` logs in with ``cert``/``key`` instead of a user name.
* Server: ``trust=PATH`` (a certificate file, or a folder of them) lists the client certificates
  that may log in with their certificate; with ``security=`` anonymous sessions are refused, so a
  user + password or ``trust=`` is required. ``clients=PATH`` (file or folder) lists the client
  application certificates that may open a session at all (others: ``BadCertificateUntrusted``);
  without it any client certificate opens the secured channel and the login decides.
* User and password as in :mod:`.secure` (``opc.tcp://line@host:4840?...&password_env=NAME``);
  a password without ``security=`` is refused unless ``allow_plaintext=1``.

The older ``$PATCHCORE_RT_OPCUA_SECURITY`` (asyncua's ``Basic256Sha256,SignAndEncrypt,cert.pem,key.pem``)
still works for a client.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult

from . import opcua_model as model
from .base import SinkError, need, split
from .secure import CREDENTIAL_KEYS, file_option, login, refuse_plaintext

ENV = "PATCHCORE_RT_OPCUA"
TIMEOUT_S = 4.0
MODES = {"sign": "Sign", "encrypt": "SignAndEncrypt"}
SECURITY_KEYS = {"security", "cert", "key"} | CREDENTIAL_KEYS
CLIENT_KEYS = SECURITY_KEYS | {"server_cert", "login"}
SERVER_KEYS = SECURITY_KEYS | {"trust", "clients"}


def quiet() -> None:
    """asyncua logs every fallback (no signing policy, a revised session timeout) as a warning; the
    runtime's log says what matters itself."""
    logging.getLogger("asyncua").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Security:
    mode: str | None = None  # "Sign" | "SignAndEncrypt" | None (no message security)
    cert: Path | None = None
    key: Path | None = None
    user: str | None = None
    password: str | None = None
    server_cert: Path | None = None  # client: the pinned server certificate
    login_cert: bool = False  # client: log in with the certificate
    trust: tuple[Path, ...] = ()  # server: client certificates allowed to log in
    clients: tuple[Path, ...] = ()  # server: client application certificates allowed to open a session


def _load_cert(path: Path, shown: str, what: str):
    from cryptography import x509

    data = path.read_bytes()
    try:
        return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise SinkError(f"{shown}: {what}={path} is not an X.509 certificate ({e})") from None


def app_uri(cert) -> str | None:
    """The certificate's application URI (its URI subject alternative name), if any."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def security_options(parts: SplitResult, q: dict[str, str], shown: str, server: bool) -> Security:
    """The security options of an ``opc.tcp://`` URL, checked (files exist and parse); SinkError otherwise."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    raw_mode = q.get("security")
    if raw_mode is not None and raw_mode not in MODES:
        raise SinkError(f"{shown}: security={raw_mode}: give security=sign or security=encrypt (Basic256Sha256)")
    mode = MODES.get(raw_mode or "")
    cert, key = file_option(q, "cert", shown), file_option(q, "key", shown)
    if mode and (cert is None or key is None):
        raise SinkError(f"{shown}: security={raw_mode} needs cert=PATH and key=PATH (this side's certificate and "
                        "private key; docs/line-systems.md says how to make them)")
    if (cert or key) and not mode and not q.get("login") == "cert":
        raise SinkError(f"{shown}: cert= and key= are used with security=sign or security=encrypt")
    if cert is not None:
        _load_cert(cert, shown, "cert")
    if key is not None:
        try:
            load_pem_private_key(key.read_bytes(), password=None)
        except (ValueError, TypeError) as e:
            raise SinkError(f"{shown}: key={key} is not an unencrypted PEM private key ({e})") from None
    user, password = login(parts, q, ENV, shown)
    legacy = not server and bool(os.environ.get(f"{ENV}_SECURITY"))  # asyncua's string: encrypted or signed
    refuse_plaintext(q, shown, password, mode is not None or legacy, "add security=encrypt with cert= and key=")
    sec = Security(mode, cert, key, user, password)
    if server:
        certs, clients = _cert_list(q, "trust", shown), _cert_list(q, "clients", shown)
        for k in ("trust", "clients"):
            if k in q and not mode:
                raise SinkError(f"{shown}: {k}= needs security=sign or security=encrypt")
        if mode and password is None and not certs:
            raise SinkError(f"{shown}: with security= anonymous sessions are refused: give a user and password "
                            "(opc.tcp://USER@host:4840?...&password_file=PATH) or trust=CLIENT_CERTS")
        if user and password is None:
            raise SinkError(f"{shown}: user {user!r} needs a password (password_file=, password_env= or "
                            f"${ENV}_PASSWORD)")
        return Security(mode, cert, key, user, password, trust=certs, clients=clients)
    login_cert = q.get("login")
    if login_cert not in (None, "cert"):
        raise SinkError(f"{shown}: login={login_cert}: the only value is login=cert (log in with cert= and key=)")
    if login_cert and (cert is None or key is None):
        raise SinkError(f"{shown}: login=cert needs cert=PATH and key=PATH")
    server_cert = file_option(q, "server_cert", shown)
    if server_cert is not None:
        _load_cert(server_cert, shown, "server_cert")
    return Security(mode, cert, key, user, password, server_cert, bool(login_cert))


def _cert_list(q: dict[str, str], key: str, shown: str) -> tuple[Path, ...]:
    """``?key=PATH``: one certificate file or a folder of them, each checked to parse."""
    where = file_option(q, key, shown)
    if where is None:
        return ()
    certs = tuple(sorted(p for p in where.iterdir() if p.is_file())) if where.is_dir() else (where,)
    if not certs:
        raise SinkError(f"{shown}: {key}={where}: no certificate in it")
    for c in certs:
        _load_cert(c, shown, key)
    return certs


def connect_client(raw: str, shown: str, sec: Security | None = None):
    """A connected asyncua sync client with the URL's security (``sec``) and credentials.
    ConnectionError (one line) when the server cannot be reached or refuses the session."""
    need("asyncua", "line", raw)
    quiet()
    from asyncua import ua
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
    from asyncua.sync import Client

    parts = split(raw, default_port=4840, fragment=True)
    url = f"opc.tcp://{parts.hostname}:{parts.port or 4840}{parts.path}"
    sec = sec or Security(user=os.environ.get(f"{ENV}_USERNAME") or parts.username,
                          password=os.environ.get(f"{ENV}_PASSWORD") or parts.password)
    c = Client(url, timeout=TIMEOUT_S)
    try:
        if sec.cert is not None:
            uri = app_uri(_load_cert(sec.cert, shown, "cert"))
            if uri:
                c.aio_obj.application_uri = uri
        if sec.user and not sec.login_cert:
            c.set_user(sec.user)
            c.set_password(sec.password or "")
        if sec.mode:
            c.set_security(SecurityPolicyBasic256Sha256, str(sec.cert), str(sec.key),
                           server_certificate=str(sec.server_cert) if sec.server_cert else None,
                           mode=getattr(ua.MessageSecurityMode, sec.mode))
        elif os.environ.get(f"{ENV}_SECURITY"):
            c.set_security_string(os.environ[f"{ENV}_SECURITY"])
        if sec.login_cert:
            c.load_client_certificate(str(sec.cert))
            c.load_private_key(str(sec.key))
    except SinkError:
        c.tloop.stop()
        raise
    except Exception as e:  # noqa: BLE001 - asyncua raises several kinds for a bad certificate or server
        c.tloop.stop()
        if isinstance(e, (OSError, TimeoutError)):
            raise ConnectionError(f"{type(e).__name__}: {e}".rstrip(": ")) from None
        raise SinkError(f"{shown}: security setup failed ({type(e).__name__}: {e})") from None
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


class LoginManager:
    """The runtime server's logins: one user with a password, and/or trusted client certificates."""

    def __init__(self, user: str | None, password: str | None, trusted_der: list[bytes]):
        self.user, self.password, self.trusted = user, password, trusted_der

    def get_user(self, iserver, username=None, password=None, certificate=None):
        from asyncua.crypto.permission_rules import User, UserRole

        if certificate is not None and username is None and any(hmac.compare_digest(certificate, t)
                                                                for t in self.trusted):
            return User(role=UserRole.User, name="certificate")
        if self.password is not None and username is not None and password is not None:
            pw = password.encode() if isinstance(password, str) else bytes(password)
            if hmac.compare_digest(username.encode(), (self.user or "").encode()) and \
                    hmac.compare_digest(pw, self.password.encode()):
                return User(role=UserRole.User, name=username)
        return None


def secure_server(server, sec: Security, shown: str) -> None:
    """Set ``server``'s (asyncua sync Server) endpoints, certificate and logins from ``sec``."""
    from asyncua import ua

    if not sec.mode:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        if sec.password is not None:  # allow_plaintext=1: the user is still checked
            server.aio_obj.iserver.set_user_manager(LoginManager(sec.user, sec.password, []))
            server.set_identity_tokens([ua.UserNameIdentityToken])
        return
    try:
        server.load_certificate(str(sec.cert))
        server.load_private_key(str(sec.key))
    except Exception as e:  # noqa: BLE001 - asyncua raises several kinds for a bad file
        raise SinkError(f"{shown}: cannot load cert/key ({type(e).__name__}: {e})") from None
    uri = app_uri(_load_cert(sec.cert, shown, "cert"))
    if uri:
        server.set_application_uri(uri)
    server.set_security_policy([getattr(ua.SecurityPolicyType, f"Basic256Sha256_{sec.mode}")])
    tokens = ([ua.UserNameIdentityToken] if sec.password is not None else []) + \
        ([ua.X509IdentityToken] if sec.trust else [])
    server.set_identity_tokens(tokens)  # no AnonymousIdentityToken
    from cryptography.hazmat.primitives.serialization import Encoding

    ders = [_load_cert(p, shown, "trust").public_bytes(Encoding.DER) for p in sec.trust]
    server.aio_obj.iserver.set_user_manager(LoginManager(sec.user, sec.password, ders))
    if sec.clients:
        allowed = [_load_cert(p, shown, "clients").public_bytes(Encoding.DER) for p in sec.clients]

        async def only_listed(cert, app_description) -> None:
            from asyncua.common.utils import ServiceError

            der = cert.public_bytes(Encoding.DER)
            if not any(hmac.compare_digest(der, a) for a in allowed):
                raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

        server.aio_obj.iserver.certificate_validator = only_listed


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


def write_value(node_type: tuple[Any, Any], value: Any) -> None:
    """Write ``value`` into one resolved node, converted to its own type."""
    from asyncua import ua

    node, vtype = node_type
    node.write_value(ua.DataValue(ua.Variant(model.convert(value, vtype), vtype)))


def write_nodes(nodes: dict[str, tuple[Any, Any]], vals: dict[str, Any]) -> None:
    """Write the mapped values, ``counter`` last."""
    for key in sorted(nodes, key=lambda k: k == "counter"):
        write_value(nodes[key], vals[key])
