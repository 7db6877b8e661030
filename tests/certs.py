"""Test certificates made with the openssl CLI in a temporary folder, with the commands
docs/line-systems.md gives (nothing here is committed): a CA, certificates it signs, and
self-signed OPC UA application certificates."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

OPCUA_EXT = ["-addext", "keyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment,dataEncipherment",
             "-addext", "extendedKeyUsage=serverAuth,clientAuth"]


def _openssl(*args: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.skip("openssl CLI not installed")
    subprocess.run([exe, *args], check=True, capture_output=True, timeout=60)


def opcua_cert(folder: Path, name: str, uri: str) -> tuple[Path, Path]:
    """A self-signed OPC UA application certificate (PEM) and key for 127.0.0.1 with ``uri``."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-keyout", str(key), "-out", str(cert),
             "-subj", f"/CN={name}", "-addext", f"subjectAltName=URI:{uri},DNS:localhost,IP:127.0.0.1", *OPCUA_EXT)
    return cert, key


def ca(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "ca.pem", folder / "ca-key.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-keyout", str(key), "-out", str(cert),
             "-subj", "/CN=test line CA")
    return cert, key


def signed(folder: Path, name: str, ca_pair: tuple[Path, Path]) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by the CA (a broker's, or a client's)."""
    cert, key, csr, ext = (folder / f"{name}.pem", folder / f"{name}-key.pem", folder / f"{name}.csr",
                           folder / f"{name}.ext")
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_pair[0]), "-CAkey", str(ca_pair[1]), "-CAcreateserial",
             "-days", "30", "-out", str(cert), "-extfile", str(ext))
    return cert, key
