"""The controller's file stores: a folder, or chunked rows in SQLite or PostgreSQL.

What replicas rely on: a replaced file is seen whole (old or new), reads by offset fetch
only what they cover, a missing file is ``NotFoundError``, and two TUF repositories on
one database never publish an older version than the other did."""

from __future__ import annotations

import hashlib
import json
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from edgefleet.contract import NotFoundError
from edgefleet.controller._db_files import DatabaseFiles
from edgefleet.controller._files import DirectoryFiles, FileStore, open_files
from edgefleet.controller._tables import stored_file_chunks
from edgefleet.controller.store import Store


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = (f"sqlite:///{tmp_path / 'ctl.db'}" if request.param == "sqlite"
           else str(request.getfixturevalue("pg_url")))
    store = Store(url)
    yield store
    store.engine.dispose()


@pytest.fixture(params=["directory", "database"])
def files(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FileStore]:
    if request.param == "directory":
        yield DirectoryFiles(tmp_path / "data")
        return
    store = Store(f"sqlite:///{tmp_path / 'ctl.db'}")
    yield DatabaseFiles(store.engine, cache_dir=tmp_path / "cache", chunk_bytes=1000)
    store.engine.dispose()


def test_every_store_reads_back_what_was_written_at_any_offset(files):
    data = bytes(range(256)) * 14  # 3584 bytes: three whole chunks of 1000 and a part
    files.put("repo/targets/a/model.onnx", data)
    assert files.get("repo/targets/a/model.onnx") == data
    assert files.size("repo/targets/a/model.onnx") == len(data)
    for offset, count in [(0, 10), (995, 10), (999, 1002), (1000, 1000), (3580, 100),
                          (0, 5000), (3584, 10), (9000, 10), (12, 0)]:
        assert files.read("repo/targets/a/model.onnx", offset, count) == (
            data[offset:offset + count], len(data)), (offset, count)
    assert files.local_path("repo/targets/a/model.onnx").read_bytes() == data
    sub = files.sub("repo")
    assert sub.get("targets/a/model.onnx") == data
    assert sub.list("targets") == ["targets/a/model.onnx"]
    assert files.list() == ["repo/targets/a/model.onnx"]
    assert files.list("repo/metadata") == []


def test_a_missing_file_is_not_found_everywhere(files):
    for call in (lambda: files.get("nope.json"), lambda: files.size("nope.json"),
                 lambda: files.read("nope.json", 0, 10),
                 lambda: files.local_path("nope.json")):
        with pytest.raises(NotFoundError, match="nope.json"):
            call()
    assert not files.exists("nope.json")
    assert files.delete("nope.json") is False
    files.put("x/y.bin", b"1")
    assert files.delete("x/y.bin") is True
    with pytest.raises(NotFoundError):
        files.get("x/y.bin")


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a//b", "a/./b", ""])
def test_keys_that_leave_the_store_are_refused(files, key):
    with pytest.raises(ValueError, match="expected a relative path"):
        files.put(key, b"x")


def test_an_empty_file_is_a_file(files):
    files.put("empty.txt", b"")
    assert files.exists("empty.txt")
    assert files.get("empty.txt") == b""
    assert files.read("empty.txt", 0, 10) == (b"", 0)


def test_a_replaced_file_is_read_whole_old_or_new_never_mixed(db, tmp_path):
    store = DatabaseFiles(db.engine, cache_dir=tmp_path / "cache", chunk_bytes=4096)
    size = 20 * 4096 + 17
    versions = [bytes([65 + i]) * size for i in range(6)]
    store.put("repo/metadata/timestamp.json", versions[0])
    seen: set[bytes] = set()
    problems: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            whole = store.get("repo/metadata/timestamp.json")
            part, total = store.read("repo/metadata/timestamp.json", 4000, 8300)
            if len(set(whole)) != 1 or len(whole) != size:
                problems.append(f"whole read mixed {sorted(set(whole))}")
            if len(set(part)) != 1 or len(part) != 8300 or total != size:
                problems.append(f"partial read mixed {sorted(set(part))}")
            seen.add(whole[:1])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for data in versions[1:]:
            store.put("repo/metadata/timestamp.json", data)
    finally:
        done.set()
        thread.join(30)
    assert problems == []
    assert seen <= {v[:1] for v in versions}
    assert store.get("repo/metadata/timestamp.json") == versions[-1]


def test_a_write_that_fails_midway_leaves_the_old_file(db, tmp_path):
    store = DatabaseFiles(db.engine, cache_dir=tmp_path / "cache", chunk_bytes=1000)
    store.put("models/m/1/model.onnx", b"old" * 1000)
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(IsADirectoryError):  # fails inside the write's transaction
        store.put_file("models/m/1/model.onnx", tmp_path / "a-folder")
    assert store.get("models/m/1/model.onnx") == b"old" * 1000


def test_a_large_file_goes_in_chunks_and_a_read_loads_only_its_range(db, tmp_path):
    store = DatabaseFiles(db.engine, cache_dir=tmp_path / "cache")  # 256 KiB chunks
    source = tmp_path / "big.onnx"
    block = hashlib.sha256(b"seed").digest() * 4096  # 128 KiB, not all one byte
    with open(source, "wb") as fh:
        for i in range(160):  # 20 MiB and a bit
            fh.write(bytes([i]) + block[1:])
        fh.write(b"tail")
    size = source.stat().st_size
    store.put_file("models/big/1/model.onnx", source)
    with db.engine.connect() as c:
        lengths = c.execute(sa.select(sa.func.length(stored_file_chunks.c.data))).scalars().all()
    assert len(lengths) == -(-size // store.chunk_bytes) == 81
    assert max(lengths) == store.chunk_bytes
    offset = 100 * len(block) - 3  # across a chunk boundary
    tracemalloc.start()
    try:
        data, total = store.read("models/big/1/model.onnx", offset, 128 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == size
    assert data == source.read_bytes()[offset:offset + 128 * 1024]
    assert peak < 3 * 1024 * 1024, f"a 128 KiB read took {peak:,} bytes"
    copy = store.local_path("models/big/1/model.onnx")
    assert copy.read_bytes() == source.read_bytes()
    assert store.local_path("models/big/1/model.onnx") == copy  # cached by content


def test_the_store_is_chosen_by_name_and_an_unknown_one_is_refused(tmp_path):
    from pydantic import ValidationError

    from edgefleet.controller.settings import Settings

    assert isinstance(open_files("directory", tmp_path), DirectoryFiles)
    with pytest.raises(ValueError, match="file_store 's3': expected one of directory, database"):
        open_files("s3", tmp_path)
    with pytest.raises(ValidationError, match="EDGEFLEET_FILE_STORE.*expected 'directory' or"):
        Settings(file_store="nfs")


def test_repositories_on_one_database_never_publish_an_older_version(db, tmp_path,
                                                                     trust_root):
    from edgefleet.controller.signing import TrustRepository

    engines = [sa.create_engine(db.engine.url), sa.create_engine(db.engine.url)]
    try:
        a, b = (TrustRepository(None, trust_root.parent, shared=True,
                                files=DatabaseFiles(e, cache_dir=tmp_path / f"c{i}").sub("repo"))
                for i, e in enumerate(engines))
        a.add_targets({"x/1/model.onnx": b"one"})
        b.add_targets({"x/2/model.onnx": b"two"})  # b first takes what a published
        a.refresh(min_remaining_fraction=1.0)  # and a what b published
        ts = json.loads(a.files.get("metadata/timestamp.json"))
        assert ts["signed"]["version"] == a.timestamp.signed.version == 4
        assert set(a.targets.signed.targets) == {"x/1/model.onnx", "x/2/model.onnx"}
        sha = a.targets.signed.targets["x/2/model.onnx"].hashes["sha256"]
        assert a.read(f"targets/x/2/{sha}.model.onnx", 1, 10) == (b"wo", 3)
        assert a.read("metadata/1.root.json", 0, 1)[1] == len(a.root_json)
        with pytest.raises(NotFoundError):
            a.read("metadata/99.root.json", 0, 10)
        assert a.metadata_dir is None and a.repo_dir is None
        assert not (tmp_path / "c0").exists()  # nothing was written locally
    finally:
        for e in engines:
            e.dispose()


def test_on_postgresql_the_publishing_lock_is_an_advisory_lock_across_engines(pg_url,
                                                                             tmp_path):
    from edgefleet.simulations.fleet import wait_until

    Store(pg_url).engine.dispose()  # the schema
    engines = [sa.create_engine(pg_url), sa.create_engine(pg_url)]
    a, b = (DatabaseFiles(e, cache_dir=tmp_path).sub("repo") for e in engines)
    got = threading.Event()

    def take() -> None:
        with b.lock("write"):
            got.set()

    def waiting() -> int:
        with engines[0].connect() as c:
            return int(c.execute(sa.text("SELECT COUNT(*) FROM pg_locks WHERE "
                                         "locktype = 'advisory' AND NOT granted")).scalar() or 0)
    try:
        with a.lock("write"):
            thread = threading.Thread(target=take)
            thread.start()
            wait_until(lambda: waiting() == 1, 10)  # b waits on the database for a
            assert not got.is_set()
        thread.join(10)
        assert got.is_set()
    finally:
        for e in engines:
            e.dispose()


def test_a_directory_controller_moves_its_files_into_the_database_without_a_rollback(
        tmp_path, trust_root):
    from _support import ASSETS
    from typer.testing import CliRunner

    from edgefleet.cli import app
    from edgefleet.controller.registry import Registry
    from edgefleet.controller.signing import TrustRepository

    data, url = tmp_path / "ctl", f"sqlite:///{tmp_path / 'ctl.db'}"
    store = Store(url)
    repo = TrustRepository(data / "repo", trust_root.parent)
    registry = Registry(store, repo, data / "models")
    row = registry.register("digits", (ASSETS / "digits.onnx").read_bytes(),
                            eval_npz=(ASSETS / "eval.npz").read_bytes())
    manifest = registry.ensure_bundle("digits", row["version"])
    assert Path(store.get_model("digits", 1)["file"]).is_absolute()  # a folder's path
    before = (repo.timestamp.signed.version, repo.bundle_files(manifest))
    store.engine.dispose()

    result = CliRunner().invoke(app, ["db", "import-files", "--data", str(data),
                                      "--db", url, "--json"])
    assert result.exit_code == 0, result.output
    first = json.loads(result.output)
    assert first["copied"] >= 8 and first["rows_repointed"] == 1 and not first["rows_missing"]
    again = json.loads(CliRunner().invoke(app, ["db", "import-files", "--data", str(data),
                                                "--db", url, "--json"]).output)
    assert again["unchanged"] > 0 and again["rows_repointed"] == 0  # rows name keys now

    store = Store(url)
    try:
        files = DatabaseFiles(store.engine, cache_dir=tmp_path / "cache")
        moved = TrustRepository(None, trust_root.parent, files=files.sub("repo"))
        assert (moved.timestamp.signed.version, moved.bundle_files(manifest)) == before
        registry = Registry(store, moved, files.sub("models"), work_dir=tmp_path / "work")
        assert store.get_model("digits", 1)["file"] == "digits/1/model.onnx"
        assert registry.dataset("digits", 1, "eval") is not None
        assert registry.ensure_bundle("digits", 1) == manifest  # signed already: kept
        sha, file, length = moved.bundle_files(manifest)[1]
        assert moved.read(file, 0, length + 10)[0] == (ASSETS / "digits.onnx").read_bytes()
    finally:
        store.engine.dispose()
    missing = CliRunner().invoke(app, ["db", "import-files", "--data", str(tmp_path / "x"),
                                       "--db", url])
    assert missing.exit_code != 0 and "expected repo/ or models/ in it" in missing.output


def test_two_replicas_registering_one_model_at_once_get_a_version_each(db, tmp_path,
                                                                       trust_root):
    from _support import ASSETS

    from edgefleet.controller.registry import Registry
    from edgefleet.controller.signing import TrustRepository

    registries = []
    for i in range(2):  # two controllers on one database, nothing shared on disk
        engine = sa.create_engine(db.engine.url)
        files = DatabaseFiles(engine, cache_dir=tmp_path / f"cache{i}")
        repo = TrustRepository(None, trust_root.parent, shared=True, files=files.sub("repo"))
        registries.append(Registry(Store(str(db.engine.url)), repo, files.sub("models"),
                                   work_dir=tmp_path / f"work{i}"))
    model = (ASSETS / "digits.onnx").read_bytes()
    kinds = {0: "eval", 1: "calibration"}
    made: dict[int, dict] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def register(i: int) -> None:
        try:
            start.wait(10)
            made[i] = registries[i].register(
                "digits", model, **{f"{kinds[i]}_npz": (ASSETS / f"{kinds[i]}.npz").read_bytes()})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(m["version"] for m in made.values()) == [1, 2]
    reader = registries[0]
    for i, row in made.items():  # each version has its own data, not the other's
        stored = reader.files.list(f"digits/{row['version']}")
        assert stored == sorted([f"digits/{row['version']}/{kinds[i]}.npz",
                                 f"digits/{row['version']}/model.onnx"]), stored
    for r in registries:
        r.store.engine.dispose()
        r.repo.files.engine.dispose()  # type: ignore[attr-defined]
