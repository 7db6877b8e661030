"""``--ray-address`` is checked before Ray is asked to connect (``ray.init`` retries for many
minutes against an address where nothing listens): one line, exit 2, within the timeout."""

from __future__ import annotations

import socket
import time

import pytest

from runtime.errors import USAGE, UsageError, exit_code_for
from runtime.line.ray_cluster import check_ray_address, ray_session


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free again once closed: nothing listens there


@pytest.mark.parametrize("address", ["nohostport", "host:", ":6379", "host:port", "host:70000", "ray://h:x"])
def test_malformed_addresses_are_usage_errors(address):
    with pytest.raises(UsageError, match="expected HOST:PORT") as e:
        check_ray_address(address)
    assert exit_code_for(e.value) == USAGE


def test_an_address_where_nothing_listens_fails_within_the_timeout():
    port = _closed_port()
    t0 = time.monotonic()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(UsageError, match="nothing answers there"):
            with ray_session(address):
                pytest.fail("connected to a closed port")
    assert time.monotonic() - t0 < 2 * 10.0 + 5  # bounded by the connect timeout, not Ray's retries


def test_a_listening_address_and_the_keywords_pass():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        check_ray_address(f"127.0.0.1:{server.getsockname()[1]}", timeout=2)
    check_ray_address("auto")
    check_ray_address("local")
