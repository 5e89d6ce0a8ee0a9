"""Bundles over HTTP(S): an agent with a ``repository_url`` fetches the same TUF
repository from nginx (or a CDN) or from the controller's own route, and verifies it
exactly as over MQTT. The attacks on what the server holds run on both transports in
``test_attacks.py``; here: installs through real nginx (HTTPS with a private CA) and
through the controller, the route's answers and cache headers, no download twice, the
config's errors, and a repository that cannot be reached.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest
from _nginx import NginxProcess
from _support import TOKEN, job_of, register_digits, wait_deployment, wait_devices_known
from fastapi.testclient import TestClient
from tuf.api import exceptions as tuf_exc

from edgefleet.agent import AgentConfig, HttpFetcher, load_config
from edgefleet.contract import FetchError, bundle_paths
from edgefleet.controller.api import create_app
from edgefleet.controller.http import ApiServer
from edgefleet.controller.rollout import RolloutPolicy
from edgefleet.simulations.fleet import wait_until

pytestmark = pytest.mark.pull_only


def _model_file(controller, version: int) -> str:
    """The repository file of ``digits:version``'s model, as devices ask for it."""
    target = bundle_paths("digits", version, "model.onnx")[1]
    info = controller.repo.targets.signed.targets[target]
    folder, _, base = target.rpartition("/")
    return f"targets/{folder}/{info.hashes['sha256']}.{base}"


def _get(url: str) -> tuple[int, Message, bytes]:
    """``(status, headers (any case), body)``."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_agent_installs_bundles_from_nginx_over_https_with_a_private_ca(
        controller, make_fleet, evalset, tmp_path):
    with NginxProcess(controller.repo.repo_dir, tmp_path / "nginx", tls=True) as nginx:
        assert nginx.ca_file is not None
        # the host's certificate is checked: without the CA bundle it is refused
        with pytest.raises(tuf_exc.DownloadError) as refused:
            HttpFetcher(nginx.url).download_bytes(f"{nginx.url}metadata/1.root.json", 1 << 20)
        assert isinstance(refused.value.__cause__, FetchError)
        assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value.__cause__)

        fleet = make_fleet(1, repository_url=nginx.url, repository_ca=nginx.ca_file)
        agent = fleet.agents[fleet.ids[0]]
        assert isinstance(agent.fetcher, HttpFetcher)
        wait_devices_known(controller, fleet.ids)
        v1 = register_digits(controller)
        dep = wait_deployment(controller, controller.deploy("digits", v1["version"])["id"])
        assert dep["state"] == "succeeded", job_of(dep, fleet.ids[0])
        assert agent.predict(evalset["x"][:1]).model.version == 1
        log = nginx.access_log
        assert f'"GET /{_model_file(controller, 1)} HTTP/1.1" 200' in log
        assert '"GET /metadata/timestamp.json HTTP/1.1" 200' in log
        assert agent.fetcher.bytes_received >= v1["size_bytes"]

        # v2 is the same model: its file is copied from v1's on the device, not fetched
        v2 = register_digits(controller)
        dep = wait_deployment(controller, controller.deploy("digits", v2["version"])["id"])
        assert dep["state"] == "succeeded", job_of(dep, fleet.ids[0])
        assert agent.predict(evalset["x"][:1]).model.version == v2["version"]
        assert _model_file(controller, 2) not in nginx.access_log
        assert f"GET /targets/bundles/digits/{v2['version']}/" in nginx.access_log  # manifest
        assert agent.fetcher.bytes_local >= v2["size_bytes"]


@pytest.mark.serve_repository
def test_agent_installs_a_bundle_through_the_controllers_own_route(controller, make_fleet,
                                                                   evalset):
    server = ApiServer(create_app(controller))
    server.start()
    try:
        base = f"{server.url}/v1/repository/"
        fleet = make_fleet(1, repository_url=base.rstrip("/"))  # the last "/" is optional
        agent = fleet.agents[fleet.ids[0]]
        wait_devices_known(controller, fleet.ids)
        v1 = register_digits(controller)
        dep = wait_deployment(controller, controller.deploy("digits", v1["version"])["id"])
        assert dep["state"] == "succeeded", job_of(dep, fleet.ids[0])
        assert agent.predict(evalset["x"][:1]).model.version == 1
        assert agent.fetcher.bytes_received >= v1["size_bytes"]

        # a model larger than one block streams whole, and may be cached for good
        model = _model_file(controller, 1)
        status, headers, body = _get(base + model)
        stored = (controller.repo.repo_dir / model).read_bytes()
        assert len(stored) > 256 * 1024
        assert (status, body) == (200, stored)
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert headers["Content-Type"] == "application/octet-stream"
        status, headers, body = _get(base + "metadata/timestamp.json")
        assert status == 200 and headers["Cache-Control"] == "no-cache"
        assert body == (controller.repo.metadata_dir / "timestamp.json").read_bytes()
        status, headers, _ = _get(base + "metadata/1.root.json")
        assert status == 200 and "immutable" in headers["Cache-Control"]
        # python-tuf probes for the next root: a 404 that no cache may keep
        next_root = f"metadata/{controller.repo.root.signed.version + 1}.root.json"
        status, headers, _ = _get(base + next_root)
        assert (status, headers["Cache-Control"]) == (404, "no-cache")
        # nothing but metadata/ and targets/: not the write lock, not a path out of it
        for outside in (".write.lock", "metadata/../.write.lock", "keys/root.json",
                        "metadata/", "targets"):
            assert _get(base + outside)[0] == 404, outside
    finally:
        server.stop()


def test_the_repository_route_is_404_unless_enabled_and_needs_no_token(controller):
    assert (controller.repo.metadata_dir / "timestamp.json").exists()
    with TestClient(create_app(controller)) as client:
        resp = client.get("/v1/repository/metadata/timestamp.json")
        assert resp.status_code == 404
        assert "EDGEFLEET_SERVE_REPOSITORY" in resp.json()["detail"]
        spec = client.get("/openapi.json").json()
        assert spec["paths"]["/v1/repository/{file}"]["get"]["security"] == []
        assert client.get("/v1/models").status_code == 401  # the rest still needs one
        assert client.get("/v1/models", headers={
            "Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_agent_with_an_unreachable_repository_reports_why_and_keeps_serving(
        controller, make_fleet, repository_nginx, evalset):
    fleet = make_fleet(1, repository_url=repository_nginx.url, fetch_timeout_s=1.0)
    agent = fleet.agents[fleet.ids[0]]
    wait_devices_known(controller, fleet.ids)
    register_digits(controller)
    assert wait_deployment(controller, controller.deploy("digits", 1)["id"])[
        "state"] == "succeeded"
    repository_nginx.stop()  # the repository host goes away

    v2 = register_digits(controller)
    dep_id = controller.deploy("digits", v2["version"],
                               policy=RolloutPolicy(wave_timeout_s=8.0))["id"]

    def reported() -> dict | None:
        job = job_of(controller.store.get_deployment(dep_id, with_events=True), fleet.ids[0])
        return job if job["reason"] == "fetch_failed" else None
    job = wait_until(reported, 20)
    assert "connection refused" in job["detail"], job
    assert repository_nginx.url in job["detail"], job
    assert agent.predict(evalset["x"][:1]).model.version == 1  # serving all along
    # the job worker retries (as over MQTT) until the wave times out and rolls back
    dep = wait_deployment(controller, dep_id)
    assert dep["state"] == "rolled_back"
    assert job_of(dep, fleet.ids[0])["state"] == "reverted"  # back to v1, still active
    assert agent.active.version == 1
    assert not agent.store.find("digits", v2["version"])


@pytest.mark.parametrize("fields,key", [
    ({"repository_url": "ftp://cdn.example/edgefleet/"}, "repository_url"),
    ({"repository_url": "https:///edgefleet/"}, "repository_url"),
    ({"repository_url": "https://cdn.example/r/?sig=1"}, "repository_url"),
    ({"repository_url": "http://cdn.example/", "repository_ca": Path("/etc/hosts")},
     "repository_ca"),
    ({"repository_url": "https://cdn.example/", "repository_ca": Path("/nonexistent.pem")},
     "repository_ca"),
])
def test_bad_repository_settings_are_refused_naming_the_key(tmp_path, trust_root, fields,
                                                            key):
    with pytest.raises(ValueError, match=key):
        AgentConfig(device_id="pi-1", state_dir=tmp_path, trust_root=trust_root, **fields)


def test_repository_ca_is_read_relative_to_agent_toml(tmp_path, trust_root):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    toml = tmp_path / "agent.toml"
    toml.write_text(f'device_id = "pi-1"\nstate_dir = "state"\ntrust_root = "{trust_root}"\n'
                    'repository_url = "https://cdn.example/edgefleet/"\n'
                    'repository_ca = "ca.pem"\n')
    config = load_config(toml)
    assert config.repository_ca == tmp_path / "ca.pem"
    assert config.repository_url == "https://cdn.example/edgefleet/"


class _SlowHost:
    """A hostile repository host: it takes connections, then says nothing at all
    (``silent``) or sends a valid answer one byte at a time (``trickle``): TUF's slow
    retrieval attack."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/"
        self.done = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.server.settimeout(0.1)
        while not self.done.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            self.conns.append(conn)
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        conn.recv(65536)
        if self.mode == "trickle":  # for 8 s at most: a fetcher that waits it out fails
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            ends = time.monotonic() + 8.0
            while not self.done.wait(0.05) and time.monotonic() < ends:
                try:
                    conn.sendall(b"{")
                except OSError:
                    return
            conn.close()
            return
        self.done.wait()

    def close(self) -> None:
        self.done.set()
        for conn in self.conns:
            conn.close()
        self.server.close()


@pytest.mark.parametrize("mode,why", [("silent", "no data for 0.5s"),
                                      ("trickle", "gave up after 1.5s")])
def test_a_host_that_stalls_or_trickles_is_cut_off_in_bounded_time(mode, why):
    host = _SlowHost(mode)
    fetcher = HttpFetcher(host.url, timeout_s=0.5, deadline_s=1.5)
    started = time.monotonic()
    try:
        # before the answer: python-tuf wraps the error; during it, it passes through
        with pytest.raises((tuf_exc.DownloadError, FetchError)) as cut:
            fetcher.download_bytes(f"{host.url}targets/big.bin", 100_000)
    finally:
        host.close()
    took = time.monotonic() - started
    error = cut.value if isinstance(cut.value, FetchError) else cut.value.__cause__
    assert isinstance(error, FetchError)
    assert why in str(error)
    # a stall is retried three times by urllib3 (4 × 0.5 s); a trickle ends at the deadline
    assert took < 4.0, took
    if mode == "trickle":
        assert took >= 1.5 and fetcher.bytes_received < 100
