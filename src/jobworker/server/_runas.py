"""Which user each owner's jobs run as.

- The local socket's caller is the server's own user: its jobs run as the server does.
- An owner named in the configuration runs as its ``uid``/``gid`` (and ``groups``), or as
  root where the admin wrote ``run_as = "root"``.
- Any other owner gets a uid of its own from ``dynamic_uids`` (gid = uid, no
  supplementary groups), allocated once and kept in the state database, so its files
  stay its own across restarts.

A server that is not root cannot switch users: every job then runs as the server's own
user, which is refused for TCP owners (they would share one user, and could read and
signal each other's jobs) unless the configuration says ``allow_shared_user = true``.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

from ._auth import Caller
from ._config import ConfigError, ServerConfig
from ._store import Store

__all__ = ["Account", "Accounts", "home_of"]


def home_of(uid: int) -> str:
    """The home directory of ``uid`` if it has one that exists, else ``/``."""
    try:
        home = pwd.getpwuid(uid).pw_dir
    except KeyError:
        return "/"
    return home if home and os.path.isdir(home) else "/"


@dataclass(frozen=True)
class Account:
    """A user to run jobs as (``uid`` None: the server's own, no switch), and its HOME."""

    uid: int | None
    gid: int
    groups: tuple[int, ...]
    home: str


class Accounts:
    def __init__(self, config: ServerConfig, store: Store) -> None:
        self._config = config
        self._store = store
        self._root = os.geteuid() == 0
        self.own = Account(None, os.getegid(), (), home_of(os.geteuid()))
        self._cache: dict[str, Account] = {}

    def check(self) -> None:
        """Refuse, at start, a configuration this server cannot honour."""
        if self._root:
            return
        if self._config.listen is not None and not self._config.allow_shared_user:
            raise ConfigError(
                "this server is not root, so it cannot run TCP owners' jobs as users of"
                " their own; they would all run as this server's user (and could read and"
                " signal each other's jobs): set allow_shared_user = true to accept that"
            )
        for name, owner in self._config.owners.items():
            if owner.uid is not None and owner.uid != os.geteuid():
                raise ConfigError(
                    f"owners.{name}: cannot run jobs as uid {owner.uid}: this server is not root"
                )

    def for_caller(self, caller: Caller) -> Account:
        """The account ``caller``'s jobs run as (may allocate a uid: blocks on the disk)."""
        if caller.local or not self._root:
            return self.own
        account = self._cache.get(caller.name)
        if account is None:
            account = self._cache[caller.name] = self._lookup(caller.name)
        return account

    def _lookup(self, name: str) -> Account:
        owner = self._config.owners.get(name)
        if owner is not None:
            if owner.run_as == "root":
                return self.own
            assert owner.uid is not None and owner.gid is not None
            return Account(owner.uid, owner.gid, owner.groups, home_of(owner.uid))
        low, high = self._config.dynamic_uids
        uid = self._store.dynamic_uid(name, low, high)
        return Account(uid, uid, (), "/")
