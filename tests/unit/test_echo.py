"""EchoServer: the demo/test backend behaves as the gateway tests rely on."""

from __future__ import annotations

import http.client
import json

from controlplane.demo.echo import EchoServer


def test_echo_describes_request_and_honours_status_override() -> None:
    with EchoServer("users") as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("POST", "/a/b?x=1", body=b"hello", headers={"X-Echo-Status": "503"})
        resp = conn.getresponse()
        payload = json.loads(resp.read())
        assert resp.status == 503
        assert resp.getheader("x-backend") == "users"
        assert payload["backend"] == "users"
        assert payload["method"] == "POST"
        assert payload["path"] == "/a/b?x=1"
        assert payload["body"] == "hello"
        assert payload["headers"]["x-echo-status"] == "503"
        conn.close()


def test_hits_counter_and_keep_alive() -> None:
    with EchoServer("orders") as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/one")
        first = conn.getresponse()
        assert first.status == 200
        first.read()
        sock = conn.sock
        assert sock is not None

        conn.request("DELETE", "/two", headers={"x-echo-delay-ms": "10"})
        second = conn.getresponse()
        assert second.status == 200
        assert json.loads(second.read())["path"] == "/two"
        assert conn.sock is sock, "second request did not reuse the keep-alive connection"

        conn.request("GET", "/__echo/hits")
        hits = conn.getresponse()
        assert json.loads(hits.read()) == {"hits": 2}
        assert server.hits == 2, "the control path must not be counted"
        assert [r["path"] for r in server.requests] == ["/one", "/two"]
        conn.close()
