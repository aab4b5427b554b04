"""The server's state database: ``<state_dir>/jobworker.db``, SQLite in WAL mode.

Today it holds the uids allocated to owners that the configuration does not map (the way
systemd's ``DynamicUser=`` allocates them, but kept for good, so an owner's files stay
its own across restarts).  Job records will live here too once they must survive a
restart; the schema is versioned (``PRAGMA user_version``) and migrated forward here.

Every call blocks on the disk: callers on an event loop run them in a thread.
"""

from __future__ import annotations

import grp
import pwd
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from jobworker import QuotaExceeded

__all__ = ["SCHEMA_VERSION", "Store", "uid_in_use"]

SCHEMA_VERSION = 1

# version -> the statements that bring the previous version to it.
_MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE dynamic_users (
            owner TEXT PRIMARY KEY,
            uid INTEGER NOT NULL UNIQUE,
            allocated_at REAL NOT NULL
        )""",
    ],
}


def uid_in_use(uid: int) -> bool:
    """Whether ``uid`` is a user or a group of this system already."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
        except KeyError:
            continue
        return True
    return False


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        # One connection, used from whichever thread holds the lock.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (version,) = self._db.execute("PRAGMA user_version").fetchone()
                if version > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"{self.path} has schema version {version}, newer than this server's"
                        f" ({SCHEMA_VERSION}): refusing to touch it"
                    )
                # (Not executescript: it would commit the transaction first.)
                for v in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[v]:
                        self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version={v}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def dynamic_uid(
        self,
        owner: str,
        low: int,
        high: int,
        in_use: Callable[[int], bool] = uid_in_use,
    ) -> int:
        """The uid of ``owner``: the one it was given before, else the lowest in
        ``[low, high]`` that no other owner has and the system does not use."""
        with self._lock:
            row = self._db.execute(
                "SELECT uid FROM dynamic_users WHERE owner = ?", (owner,)
            ).fetchone()
            if row is not None:
                return int(row[0])
            # IMMEDIATE: another server on the same database waits; it cannot pick the same.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT uid FROM dynamic_users WHERE owner = ?", (owner,)
                ).fetchone()
                if row is not None:
                    uid = int(row[0])
                else:
                    taken = {
                        r[0]
                        for r in self._db.execute(
                            "SELECT uid FROM dynamic_users WHERE uid BETWEEN ? AND ?", (low, high)
                        )
                    }
                    uid = next(
                        (u for u in range(low, high + 1) if u not in taken and not in_use(u)), -1
                    )
                    if uid < 0:
                        raise QuotaExceeded(f"no free uid left in the range {low}-{high}")
                    self._db.execute(
                        "INSERT INTO dynamic_users (owner, uid, allocated_at) VALUES (?, ?, ?)",
                        (owner, uid, time.time()),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return uid

    def close(self) -> None:
        with self._lock:
            self._db.close()
