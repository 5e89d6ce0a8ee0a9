"""Bundle broadcast: each bundle file leaves the controller once, retained on its blob
topics; devices take it from there, pull only the blocks that did not come, and never
use a byte that does not verify. Real Mosquitto, real agents, real TUF."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from _support import register_digits, wait_deployment, wait_devices_known

from edgefleet.contract import ChunkResponse, DesiredState, JobState, JobStatus, blob_topic
from edgefleet.controller import RolloutPolicy
from edgefleet.simulations.fleet import wait_until


def _bundle_bytes(controller, dep) -> tuple[int, list[tuple[str, str, int]]]:
    manifest = controller.store.get_desired(dep["jobs"][0]["device"])["payload"]["manifest"]
    files = controller.repo.bundle_files(manifest)
    return sum(length for _sha, _file, length in files), files


def _deploy(controller, version: int) -> dict:
    dep = controller.deploy("digits", version,
                            policy=RolloutPolicy(health_window_s=0.5, wave_timeout_s=60))
    return wait_deployment(controller, dep["id"], 90)


def test_a_wave_takes_the_bundle_from_one_broadcast_and_pulls_none_of_it(controller,
                                                                          make_fleet):
    fleet = make_fleet(4)
    wait_devices_known(controller, fleet.ids)
    v = register_digits(controller)["version"]
    served = controller.counters["chunks_served"]
    dep = _deploy(controller, v)
    assert dep["state"] == "succeeded", [(j["device"], j["state"]) for j in dep["jobs"]]
    assert controller.counters["chunks_served"] == served  # nothing asked for
    size, files = _bundle_bytes(controller, dep)
    assert len(files) >= 3  # manifest, model, data files
    # once for four devices, with the timestamp, snapshot and targets metadata they need
    # first, and no byte of any pulled; no device asks for a root above the one the
    # desired state names
    metadata = controller.repo.metadata_files()
    meta_size = sum(length for _sha, _file, length in metadata)
    assert controller.broadcaster.counters["broadcast_bytes"] == size + meta_size
    assert controller.broadcaster.counters["broadcast_files"] == len(files) + len(metadata)
    assert controller.counters["target_bytes_served"] == 0
    desired = controller.store.get_desired(fleet.ids[0])["payload"]
    assert desired["root_version"] == controller.repo.root_version
    assert set(desired["metadata"]) == {f for _sha, f, _n in metadata}
    for agent in fleet.agents.values():
        assert agent.fetcher.bytes_from_broadcast == size and agent.fetcher.bytes_pulled == 0
        assert agent.fetcher.metadata_from_broadcast == meta_size
        assert agent.blobs.stats()["gathering"] == 0  # cache emptied after the job
        assert not list((agent.config.state_dir / "blobs").glob("*"))


def test_a_broadcast_model_is_hashed_once_and_installed_without_a_copy(controller, make_fleet,
                                                                        monkeypatch):
    """python-tuf checks the file where its blocks were written; the install then moves
    that very file (same inode) and does not read it again."""
    from edgefleet.agent import models

    fleet = make_fleet(1)
    wait_devices_known(controller, fleet.ids)
    agent = fleet.agents[fleet.ids[0]]
    claimed: dict[str, int] = {}
    claim = agent.blobs.claim

    def noting_inode(sha, dest):
        path = agent.blobs.directory / f"{sha}.part"
        inode = path.stat().st_ino if path.exists() else -1
        if claim(sha, dest):
            claimed[dest.name] = inode
            return True
        return False

    hashed: list[str] = []
    sha256_file = models.sha256_file
    monkeypatch.setattr(agent.blobs, "claim", noting_inode)
    monkeypatch.setattr(models, "sha256_file", lambda p, *a: hashed.append(p) or sha256_file(p, *a))
    v = register_digits(controller)["version"]
    dep = _deploy(controller, v)
    assert dep["state"] == "succeeded", [(j["device"], j["state"]) for j in dep["jobs"]]
    installed = agent.store.get(agent.active)
    assert installed is not None and installed.manifest.version == v
    model = installed.model_path
    assert claimed.get(model.name) == model.stat().st_ino
    assert hashed == []  # the store took python-tuf's check of these very files
    assert agent.fetcher.bytes_pulled == 0


def test_a_device_that_missed_blocks_pulls_just_those(controller, make_fleet, monkeypatch):
    fleet = make_fleet(2)
    wait_devices_known(controller, fleet.ids)
    lossy = fleet.agents[fleet.ids[0]]
    put = lossy.blobs.put
    dropped: list[int] = []
    v = register_digits(controller)["version"]

    def lose_first_blocks(sha: str, offset: int, frame: bytes) -> bool:
        # the first block of the first two bundle files (the job's desired state lists
        # them; it is the job under way when its blocks come)
        job = lossy.jobs.current
        if offset == 0 and job is not None and sha in job.broadcast and len(dropped) < 2:
            dropped.append(len(ChunkResponse.decode(frame).data))
            return False
        return put(sha, offset, frame)

    monkeypatch.setattr(lossy.blobs, "put", lose_first_blocks)
    monkeypatch.setattr(lossy.fetcher, "_broadcast_wait", 0.5)
    dep = _deploy(controller, v)
    assert dep["state"] == "succeeded", [(j["device"], j["state"]) for j in dep["jobs"]]
    size, _files = _bundle_bytes(controller, dep)
    assert len(dropped) == 2
    # the repairs are the lost blocks only, and the controller served exactly those
    assert lossy.fetcher.bytes_pulled == sum(dropped)
    assert lossy.fetcher.bytes_from_broadcast == size - sum(dropped)
    assert controller.counters["target_bytes_served"] == sum(dropped)
    other = fleet.agents[fleet.ids[1]]
    assert other.fetcher.bytes_pulled == 0 and other.fetcher.bytes_from_broadcast == size


def test_a_late_device_gets_the_retained_blocks_and_a_forged_block_is_never_used(
        controller, make_fleet, mosquitto):
    fleet = make_fleet(2)
    wait_devices_known(controller, fleet.ids)
    late, forged_for = fleet.ids
    fleet.stop_agent(late)
    fleet.stop_agent(forged_for)
    v = register_digits(controller)["version"]
    dep = controller.deploy("digits", v,
                            policy=RolloutPolicy(health_window_s=0.5, wave_timeout_s=90))
    # the broadcast goes out while both are away
    wait_until_sent = threading.Event()
    for _ in range(200):
        if controller.broadcaster.pending() == 0 and \
                controller.broadcaster.counters["broadcast_files"] >= 3:
            wait_until_sent.set()
            break
        wait_until_sent.wait(0.05)
    assert wait_until_sent.is_set()
    desired = controller.store.get_desired(forged_for)["payload"]
    files = controller.repo.bundle_files(desired["manifest"])
    model_sha, _file, model_len = files[1]
    # someone with the broker's write access replaces a retained block of the model
    forger = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="forger")
    forger.connect("127.0.0.1", mosquitto.port)
    forger.loop_start()
    # a block of the real block's size, so the file adds up and only its hash is wrong
    forged = b"\0" * min(controller.broadcaster.block_bytes, model_len)
    frame = ChunkResponse("", model_sha, 0, model_len, "ok", forged).encode()
    forger.publish(blob_topic(model_sha, 0), frame, qos=1, retain=True).wait_for_publish(5)
    forger.loop_stop()
    forger.disconnect()

    fleet.start([late, forged_for])
    dep = wait_deployment(controller, dep["id"], 90)
    assert dep["state"] == "succeeded", [(j["device"], j["state"], j["reason"])
                                         for j in dep["jobs"]]
    size = sum(length for _s, _f, length in files)
    for device in (late, forged_for):
        agent = fleet.agents[device]
        assert agent.active is not None and agent.active.version == v
        # the model's blocks did not hash to its name: dropped, and the model pulled whole
        assert agent.blobs.stats()["rejected"] == 1
        assert agent.fetcher.bytes_pulled == model_len
        assert agent.fetcher.bytes_from_broadcast == size - model_len
    assert controller.counters["target_bytes_served"] == 2 * model_len


def test_a_tampered_file_on_the_server_is_refused_when_broadcast_too(controller, make_fleet):
    fleet = make_fleet(1)
    wait_devices_known(controller, fleet.ids)
    v = register_digits(controller)["version"]
    manifest = controller.registry.ensure_bundle("digits", v)
    model_sha, stored, _length = controller.repo.bundle_files(manifest)[1]
    path = controller.repo.repo_dir / stored
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # before its first broadcast: what goes out is tampered
    path.write_bytes(bytes(data))

    dep = controller.deploy("digits", v, policy=RolloutPolicy(on_breach="pause",
                                                              wave_timeout_s=60))
    dep = wait_deployment(controller, dep["id"], 90, states=("paused",))
    (job,) = dep["jobs"]
    assert job["state"] == "failed" and job["reason"] == "tampered_file", job
    agent = fleet.agents[fleet.ids[0]]
    # the broadcast copy did not hash to its name (dropped), the pulled one failed TUF
    assert agent.blobs.stats()["rejected"] == 1 and agent.active is None
    assert controller.broadcaster.counters["broadcast_files"] >= 3
    assert model_sha in controller.store.get_desired(fleet.ids[0])["payload"]["broadcast"]


def test_broadcast_blocks_go_out_once_and_are_cleared_after_their_ttl(controller):
    from edgefleet.contract import ManualClock, parse_blob_topic
    from edgefleet.controller._broadcast import Broadcaster

    v = register_digits(controller)["version"]
    manifest = controller.registry.ensure_bundle("digits", v)
    sent: list[tuple[str, bytes, bool]] = []
    done = threading.Event()
    files = controller.repo.bundle_files(manifest)

    def publish(topic: str, payload: bytes, retain: bool) -> None:
        sent.append((topic, payload, retain))
        if sum(len(ChunkResponse.decode(p).data) for _t, p, _r in sent if p) == \
                sum(length for _s, _f, length in files):
            done.set()

    clock = ManualClock(1000.0)
    caster = Broadcaster(controller.repo, publish, clock, block_bytes=64 * 1024, ttl_s=60)
    try:
        shas = caster.announce(manifest)
        assert shas == [sha for sha, _f, _l in files]
        assert done.wait(10)
        assert caster.announce(manifest) == shas  # announced again: nothing sent again
        clock.advance(30)
        caster.announce(manifest)  # still wanted: the ttl counts from here
        clock.advance(59)
        assert caster.prune() == 0
        blocks = [(t, p) for t, p, retain in sent if retain and p]
        assert caster.pending() == 0 and len(blocks) == len(sent)
        assert len({t for t, _p in blocks}) == len(blocks)  # each block went out once
        clock.advance(2)
        assert caster.prune() == len(files)
        cleared = [t for t, p, retain in sent[len(blocks):] if retain and not p]
        # every block published is cleared with an empty retained message, once
        assert sorted(cleared) == sorted(t for t, _p in blocks)
        assert {parse_blob_topic(t)[0] for t in cleared} == set(shas)
    finally:
        caster.stop()


def test_after_a_broker_restart_the_wanted_files_are_broadcast_again(controller, make_fleet,
                                                                      mosquitto):
    from edgefleet.simulations.fleet import wait_until

    fleet = make_fleet(1)
    wait_devices_known(controller, fleet.ids)
    v = register_digits(controller)["version"]
    dep = _deploy(controller, v)
    assert dep["state"] == "succeeded"
    sent = controller.broadcaster.counters["broadcast_bytes"]
    # the test broker keeps no state: a restart loses every retained block
    mosquitto.restart()
    wait_until(lambda: controller.broadcaster.counters["broadcast_republished"] > 0, 30)
    wait_until(lambda: controller.broadcaster.counters["broadcast_bytes"] == 2 * sent
               and controller.broadcaster.pending() == 0, 30)
    # a device that joins now gets them from the broker again, not by pulling
    newcomer = make_fleet(1)
    wait_devices_known(controller, newcomer.ids)
    dep = controller.deploy("digits", v, devices=newcomer.ids,
                            policy=RolloutPolicy(health_window_s=0.5, wave_timeout_s=60))
    assert wait_deployment(controller, dep["id"], 90)["state"] == "succeeded"
    agent = newcomer.agents[newcomer.ids[0]]
    size, _files = _bundle_bytes(controller, dep)
    assert agent.fetcher.bytes_from_broadcast == size and agent.fetcher.bytes_pulled == 0
    assert controller.counters["target_bytes_served"] == 0


def test_a_file_the_device_holds_already_is_copied_not_downloaded(controller, make_fleet):
    fleet = make_fleet(1)
    wait_devices_known(controller, fleet.ids)
    agent = fleet.agents[fleet.ids[0]]
    v1 = register_digits(controller)["version"]
    assert _deploy(controller, v1)["state"] == "succeeded"
    before = controller.broadcaster.counters["broadcast_bytes"]
    took = agent.fetcher.bytes_from_broadcast
    # v2 is the same model (and data) in a new version: only its manifest is new
    v2 = register_digits(controller)["version"]
    dep = _deploy(controller, v2)
    assert dep["state"] == "succeeded" and agent.active.version == v2
    size, files = _bundle_bytes(controller, dep)
    manifest_len = files[0][2]
    assert agent.fetcher.bytes_local == size - manifest_len  # model and data files copied
    assert agent.fetcher.bytes_from_broadcast - took == manifest_len
    assert agent.fetcher.bytes_pulled == 0
    # the controller announced them again, but had sent them already: what went out is
    # the new manifest and the new snapshot and targets metadata
    meta_size = sum(length for _sha, _file, length in controller.repo.metadata_files())
    assert controller.broadcaster.counters["broadcast_bytes"] - before == \
        manifest_len + meta_size


def test_metadata_named_wrongly_in_a_desired_state_is_pulled_instead(controller, make_fleet):
    fleet = make_fleet(1)
    wait_devices_known(controller, fleet.ids)
    (device,) = fleet.ids
    agent = fleet.agents[device]
    v = register_digits(controller)["version"]
    manifest = controller.registry.manifest_for("digits", v, "")
    files = controller._broadcast(manifest)
    names = controller._broadcast_metadata()
    (snapshot,) = [n for n in names if n.endswith(".snapshot.json")]
    (targets,) = [n for n in names if n.endswith(".targets.json")]
    # the snapshot's name mapped to the targets file's content: broadcast, whole, hashing
    # to its sha256, and not the snapshot the timestamp signs
    forged = {snapshot: names[targets], targets: names[targets]}
    job = "dep-forged-metadata"
    desired = DesiredState(deployment=job, job=job, model="digits", version=v,
                           manifest=manifest, issued_at=time.time(), device=device,
                           broadcast=files, metadata=forged)
    controller._post_desired(device, desired)
    controller.send_command(device, "deploy", desired=desired)
    wait_until(lambda: agent.jobs.done.get(job) in JobState.TERMINAL, 60)
    assert agent.jobs.done[job] == JobState.HEALTHY, JobStatus.decode(
        agent.jobs.last_status(job))
    assert agent.active.version == v
    assert agent.fetcher.named == {}  # the job's names were dropped with it


def test_a_block_of_another_file_does_not_end_the_wait_for_this_one(tmp_path):
    """Another file's completion wakes every reader; only its own file complete (or
    ``wait_s`` without a block of it) ends a reader's wait."""
    import hashlib

    from edgefleet.agent._blobs import BlobCache

    cache = BlobCache(tmp_path)
    mine, other = b"t" * 700, b"b" * 1_000
    sha_mine, sha_other = (hashlib.sha256(x).hexdigest() for x in (mine, other))
    assert cache.expect([sha_mine, sha_other]) == [sha_mine, sha_other]
    waiting = threading.Event()
    wait = cache._cond.wait

    def noted_wait(timeout=None):
        waiting.set()
        return wait(timeout)

    cache._cond.wait = noted_wait  # type: ignore[method-assign]
    got: list[int | None] = []
    reader = threading.Thread(target=lambda: got.append(
        cache.wait_complete(sha_mine, wait_s=30.0)))
    reader.start()
    assert waiting.wait(10)
    frame = ChunkResponse("", sha_other, 0, len(other), "ok", other).encode()
    assert cache.put(sha_other, 0, frame)  # wakes the reader, whose file has nothing yet
    waiting.clear()
    assert waiting.wait(10)  # …and it waits again
    assert cache.put(sha_mine, 0, ChunkResponse("", sha_mine, 0, len(mine), "ok",
                                                mine).encode())
    reader.join(10)
    assert got == [len(mine)]
    assert cache.path(sha_mine).read_bytes() == mine
