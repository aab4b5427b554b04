"""The server's state database: uids allocated to owners, for good."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from jobworker import QuotaExceeded
from jobworker.server._store import SCHEMA_VERSION, Store, uid_in_use


def test_dynamic_uids_are_stable_and_distinct(tmp_path: Path) -> None:
    db = tmp_path / "jobworker.db"
    store = Store(db)
    try:
        alice = store.dynamic_uid("alice", 61184, 61190)
        bob = store.dynamic_uid("bob", 61184, 61190)
        assert alice != bob
        assert store.dynamic_uid("alice", 61184, 61190) == alice
    finally:
        store.close()
    # A restart finds the same uids.
    store = Store(db)
    try:
        assert store.dynamic_uid("bob", 61184, 61190) == bob
        assert store.dynamic_uid("alice", 61184, 61190) == alice
    finally:
        store.close()
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    raw.close()


def test_uids_the_system_uses_are_skipped(tmp_path: Path) -> None:
    store = Store(tmp_path / "jobworker.db")
    try:
        assert uid_in_use(0)  # root
        free = next(u for u in range(70000) if not uid_in_use(u))
        assert store.dynamic_uid("carol", 0, free) == free
        used = {100, 101}
        assert store.dynamic_uid("dave", 100, 105, in_use=used.__contains__) == 102
    finally:
        store.close()


def test_an_exhausted_range_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "jobworker.db")
    try:
        store.dynamic_uid("a", 61184, 61185, in_use=lambda u: False)
        store.dynamic_uid("b", 61184, 61185, in_use=lambda u: False)
        with pytest.raises(QuotaExceeded):
            store.dynamic_uid("c", 61184, 61185, in_use=lambda u: False)
    finally:
        store.close()


def test_two_servers_on_one_database_never_share_a_uid(tmp_path: Path) -> None:
    db = tmp_path / "jobworker.db"
    stores = [Store(db), Store(db)]
    got: dict[str, int] = {}

    def allocate(store: Store, names: list[str]) -> None:
        for name in names:
            got[name] = store.dynamic_uid(name, 61184, 61184 + 99, in_use=lambda u: False)

    names = [f"user{i}" for i in range(40)]
    threads = [
        threading.Thread(target=allocate, args=(stores[0], names[::2] + names[1::2])),
        threading.Thread(target=allocate, args=(stores[1], names[1::2] + names[::2])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert len(set(got.values())) == len(names)


def test_a_newer_schema_is_not_touched(tmp_path: Path) -> None:
    db = tmp_path / "jobworker.db"
    with sqlite3.connect(db) as raw:
        raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(RuntimeError, match="newer"):
        Store(db)
