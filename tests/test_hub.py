"""The hub reachability probe (clo.hub.hub_online) against local HTTP servers and a local forward proxy, no network."""

import http.server
import socket
import time

import pytest
from conftest import threaded_servers

from clo import hub

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


class _Server(http.server.ThreadingHTTPServer):
    """Answers every GET with `status` and records each request line's target (an absolute URI through a proxy)."""

    def __init__(self, status: int):
        self.status, self.paths, self.user_agents = status, [], []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.paths.append(self.path)
        self.server.user_agents.append(self.headers.get("user-agent", ""))
        body = b'[{"id": "tiny"}]'
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_CONNECT(self):  # an HTTPS tunnel request: refused with `status` (no TLS here)
        self.server.paths.append(f"CONNECT {self.path}")
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """Start local HTTP servers in threads: serve(200) -> a server that answers 200 to any GET."""
    yield from threaded_servers(lambda status=200: _Server(status))


@pytest.fixture
def probe(monkeypatch):
    """Online by default, no proxy, and a fresh probe before and after (the answer is cached per process)."""
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT") + PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # in case the suite itself runs under HF_HUB_OFFLINE=1
    monkeypatch.delenv("REQUEST_METHOD", raising=False)  # urllib ignores HTTP_PROXY under CGI (httpoxy)
    hub.hub_online.cache_clear()
    yield monkeypatch
    hub.hub_online.cache_clear()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoint_that_answers_is_online(probe, serve):
    server = serve(200)
    probe.setenv("HF_ENDPOINT", server.url + "/")
    assert hub.hub_online() is True
    assert server.paths == ["/api/models?limit=1"]
    assert "hf_hub/" in server.user_agents[0]  # huggingface_hub's own user agent


def test_answer_is_cached_until_cleared(probe, serve):
    server = serve(200)
    probe.setenv("HF_ENDPOINT", server.url)
    assert hub.hub_online() and hub.hub_online()
    assert len(server.paths) == 1
    hub.hub_online.cache_clear()
    probe.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    assert hub.hub_online() is False


@pytest.mark.parametrize("status", [401, 404])
def test_hub_that_refuses_the_path_is_still_online(probe, serve, status):
    probe.setenv("HF_ENDPOINT", serve(status).url)
    assert hub.hub_online() is True


def test_closed_port_is_offline_quickly(probe):
    probe.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    assert hub.hub_online() is False
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("name", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_mode_sends_nothing(probe, serve, name):
    server = serve(200)
    probe.setenv("HF_ENDPOINT", server.url)
    probe.setenv(name, "1")
    assert hub.hub_online() is False
    assert server.paths == []


def test_offline_mode_read_at_import_sends_nothing(probe, serve):
    from huggingface_hub import constants

    server = serve(200)
    probe.setenv("HF_ENDPOINT", server.url)
    probe.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.hub_online() is False
    assert server.paths == []


def test_endpoint_constant_is_the_fallback(probe, serve):
    from huggingface_hub import constants

    server = serve(200)
    probe.setattr(constants, "ENDPOINT", server.url)
    assert hub.hub_online() is True
    assert server.paths == ["/api/models?limit=1"]


def test_request_goes_through_the_proxy(probe, serve):
    proxy = serve(200)
    probe.setenv("HF_ENDPOINT", "http://fake-hub.invalid")
    probe.setenv("HTTP_PROXY", proxy.url)
    assert hub.hub_online() is True
    assert proxy.paths == ["http://fake-hub.invalid/api/models?limit=1"]


def test_same_endpoint_without_the_proxy_is_offline(probe):
    probe.setenv("HF_ENDPOINT", "http://fake-hub.invalid")  # .invalid never resolves
    assert hub.hub_online() is False


def test_no_proxy_bypasses_the_proxy(probe, serve):
    proxy, server = serve(200), serve(200)
    probe.setenv("HF_ENDPOINT", server.url)
    probe.setenv("HTTP_PROXY", proxy.url)
    probe.setenv("NO_PROXY", "127.0.0.1")
    assert hub.hub_online() is True
    assert proxy.paths == [] and server.paths == ["/api/models?limit=1"]


@pytest.mark.parametrize("status", [500, 502, 503, 504, 407])
def test_proxy_that_cannot_reach_the_hub_is_offline(probe, serve, status):
    proxy = serve(status)
    probe.setenv("HF_ENDPOINT", "http://fake-hub.invalid")
    probe.setenv("HTTP_PROXY", proxy.url)
    assert hub.hub_online() is False
    assert proxy.paths == ["http://fake-hub.invalid/api/models?limit=1"]


def test_https_endpoint_tunnels_through_https_proxy(probe, serve):
    proxy = serve(502)  # the proxy cannot open the tunnel: its CONNECT answer is the only answer
    probe.setenv("HF_ENDPOINT", "https://fake-hub.invalid")
    probe.setenv("HTTPS_PROXY", proxy.url)
    assert hub.hub_online() is False
    assert proxy.paths == ["CONNECT fake-hub.invalid:443"]


def test_malformed_endpoint_is_offline(probe):
    probe.setenv("HF_ENDPOINT", "not a url")
    assert hub.hub_online() is False


def test_a_repo_id_is_checked_by_the_hub_libraries_own_rules():
    """push --repo and CLO_VOTES_REPO name a repo as owner/name, by huggingface_hub's validate_repo_id: an underscore
    may lead, a trailing newline, a doubled or trailing dash or dot, a revision and a missing owner may not."""
    from clo import CLOError
    from clo.hub import check_repo_id

    for good in ("me/clo-votes", "me/_votes", "_me/x", "Org.Name/x.y_z"):
        assert check_repo_id(good, "bad {!r}") == good
    for bad in ("clo-votes", "me/x\n", "me/x-", "me/x..y", "me/x--y", "me/x.git", "me/x@main", "a/b/c", "", None):
        with pytest.raises(CLOError, match=r"^bad "):
            check_repo_id(bad, "bad {!r}")


def test_a_bad_push_to_hub_target_names_its_own_flag():
    from clo import CLOError
    from clo.train.push import push_targets

    assert push_targets("me/tiny-{method}-{lang}", ["clo"], "ko") == {"clo": "me/tiny-clo-ko"}
    with pytest.raises(CLOError, match=r"^--push-to-hub must name a hub repo id OWNER/NAME .*got 'me/a b-clo'$"):
        push_targets("me/a b-{method}", ["clo"], "ko")


def test_the_remote_engine_refuses_two_hub_adapters_served_under_one_name(tmp_path):
    """Two repos of one name would be one variant on the server, the second replacing the first: refused, as
    find_adapters refuses it for the local engines, before the server is asked anything."""
    from clo import CLOError
    from clo.engines import load_engine

    with pytest.raises(CLOError, match="both be served as 'x'"):
        load_engine("remote", url="http://127.0.0.1:9", adapters_dir=str(tmp_path), adapters=["a/x", "b/x@main"])
