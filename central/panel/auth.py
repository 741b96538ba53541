"""Users, sessions and the audit trail of the panel, in the central store.

Passwords are hashed with Argon2id (argon2-cffi, RFC 9106 parameters); a session is a random
token whose SHA-256 is kept (a copy of the store does not log anyone in), with its own CSRF
token; every action, refusal and log-in is a row of ``panel_audit``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

import common.clock
from central.store import Migration, Schema, Store, Tx

__all__ = [
    "ROLES",
    "SCHEMA",
    "AuthError",
    "Role",
    "Session",
    "Users",
    "audit",
    "audit_done",
    "recent_audit",
]

#: viewer: sees; operator: also acts on meters; admin: sees and changes what the utility
#: declares (the tariff plans, docs/tariff.md) — not an operator's actions
Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 10

SCHEMA = Schema(
    "panel",
    (
        Migration(
            1,
            "panel: users, sessions, audit trail",
            {
                "sqlite": """
CREATE TABLE IF NOT EXISTS panel_user (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL, changed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS panel_session (
    token_hash TEXT PRIMARY KEY, user_name TEXT NOT NULL, csrf TEXT NOT NULL,
    expires_at REAL NOT NULL, seen_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS panel_session_user ON panel_session (user_name);
CREATE TABLE IF NOT EXISTS panel_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, user_name TEXT NOT NULL,
    role TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, args TEXT NOT NULL,
    outcome TEXT NOT NULL, detail TEXT NOT NULL, remote TEXT NOT NULL
);
""",
                "postgresql": """
CREATE TABLE IF NOT EXISTS panel_user (
    name TEXT COLLATE "C" PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL, changed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS panel_session (
    token_hash TEXT COLLATE "C" PRIMARY KEY, user_name TEXT COLLATE "C" NOT NULL,
    csrf TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL, seen_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS panel_session_user ON panel_session (user_name);
CREATE TABLE IF NOT EXISTS panel_audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at TEXT NOT NULL,
    user_name TEXT COLLATE "C" NOT NULL, role TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT NOT NULL, args TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL,
    remote TEXT NOT NULL
);
""",
            },
        ),
    ),
)


class AuthError(ValueError):
    """A user-management request that cannot be done (unknown user, bad name, weak password);
    the message says why."""


@dataclass(frozen=True)
class Session:
    user: str
    role: Role
    csrf: str
    token_hash: str

    @property
    def can_act(self) -> bool:
        return self.role == "operator"


def _now_iso() -> str:
    return common.clock.current().now().isoformat(timespec="seconds")


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Users:
    """User management and log-in against the store (every call is one short statement or
    transaction; Argon2 runs in the caller's thread: call from a worker thread in a server)."""

    def __init__(self, store: Store, hasher: PasswordHasher | None = None) -> None:
        self.store = store
        store.migrate(SCHEMA)
        self.hasher = hasher or PasswordHasher()
        #: a hash to verify against when the user does not exist, so both take as long
        self._dummy = self.hasher.hash(secrets.token_hex(16))

    # --- management ----------------------------------------------------------------------------
    def add(self, name: str, role: str, password: str) -> None:
        _check_name(name)
        role_ = _check_role(role)
        _check_password(password)
        hashed = self.hasher.hash(password)
        now = _now_iso()

        def write(tx: Tx) -> None:
            if tx.one("SELECT 1 FROM panel_user WHERE name = ?", (name,)):
                raise AuthError(f"user {name!r} exists (passwd changes the password)")
            tx.execute(
                "INSERT INTO panel_user (name, role, password_hash, created_at, changed_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (name, role_, hashed, now, now),
            )

        self.store.write(write)

    def passwd(self, name: str, password: str) -> None:
        """A new password; the user's sessions end."""
        _check_password(password)
        hashed = self.hasher.hash(password)
        self._change(name, "password_hash = ?", (hashed,))

    def set_role(self, name: str, role: str) -> None:
        """Takes effect on the user's next request (sessions read the role from the user)."""
        self._change(name, "role = ?", (_check_role(role),), end_sessions=False)

    def remove(self, name: str) -> None:
        def write(tx: Tx) -> None:
            if not tx.execute("DELETE FROM panel_user WHERE name = ?", (name,)):
                raise AuthError(f"no user {name!r}")
            tx.execute("DELETE FROM panel_session WHERE user_name = ?", (name,))

        self.store.write(write)

    def _change(
        self, name: str, assignment: str, params: tuple[Any, ...], *, end_sessions: bool = True
    ) -> None:
        def write(tx: Tx) -> None:
            # assignment is one of this module's constants, never input
            changed = tx.execute(
                f"UPDATE panel_user SET {assignment}, changed_at = ? WHERE name = ?",  # noqa: S608
                (*params, _now_iso(), name),
            )
            if not changed:
                raise AuthError(f"no user {name!r}")
            if end_sessions:
                tx.execute("DELETE FROM panel_session WHERE user_name = ?", (name,))

        self.store.write(write)

    def list(self) -> list[tuple[str, str, str, str]]:
        """(name, role, created, changed) per user."""
        return [
            (str(n), str(r), str(c), str(ch))
            for n, r, c, ch in self.store.rows(
                "SELECT name, role, created_at, changed_at FROM panel_user ORDER BY name"
            )
        ]

    # --- log-in and sessions -------------------------------------------------------------------
    def verify(self, name: str, password: str) -> Role | None:
        """The user's role when the password is right, else None (same cost either way)."""
        rows = self.store.rows("SELECT role, password_hash FROM panel_user WHERE name = ?", (name,))
        hashed = str(rows[0][1]) if rows else self._dummy
        try:
            self.hasher.verify(hashed, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if not rows:
            return None
        if self.hasher.check_needs_rehash(hashed):  # parameters raised since it was made
            self._change(name, "password_hash = ?", (self.hasher.hash(password),),
                         end_sessions=False)  # fmt: skip
        role = str(rows[0][0])
        return role if role in ROLES else None

    def open_session(self, name: str, hours: float) -> tuple[str, str]:
        """A new session: (the cookie's token, its CSRF token)."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = self.store.sql.now  # a constant expression of the dialect
        self.store.execute(
            "INSERT INTO panel_session (token_hash, user_name, csrf, expires_at, seen_at)"  # noqa: S608
            f" VALUES (?, ?, ?, {now} + ?, {now})",
            (_token_hash(token), name, csrf, hours * 3600.0),
        )
        return token, csrf

    def session(self, token: str, idle_s: float) -> Session | None:
        """The live session of a cookie's token (not expired, not idle too long, its user still
        there), marking it seen (at most once a minute)."""
        now = self.store.sql.now
        h = _token_hash(token)
        rows = self.store.rows(
            "SELECT s.user_name, u.role, s.csrf, s.seen_at, "  # noqa: S608
            f"{now} FROM panel_session s JOIN panel_user u ON u.name = s.user_name"
            f" WHERE s.token_hash = ? AND s.expires_at > {now} AND s.seen_at > {now} - ?",
            (h, idle_s),
        )
        if not rows:
            return None
        user, role, csrf, seen, db_now = rows[0]
        if float(db_now) - float(seen) > 60:
            self.store.execute(
                f"UPDATE panel_session SET seen_at = {now} WHERE token_hash = ?",  # noqa: S608
                (h,),
            )
        if role not in ROLES:
            return None
        return Session(str(user), role, str(csrf), h)

    def close_session(self, token_hash: str) -> None:
        self.store.execute("DELETE FROM panel_session WHERE token_hash = ?", (token_hash,))

    def purge_sessions(self) -> int:
        now = self.store.sql.now
        return self.store.execute(f"DELETE FROM panel_session WHERE expires_at < {now}")  # noqa: S608


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise AuthError(f"user name {name!r}: 1-64 of A-Z a-z 0-9 _ . @ -")


def _check_role(role: str) -> Role:
    if role not in ROLES:
        raise AuthError(f"role {role!r}: one of {', '.join(ROLES)}")
    return role


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"a password needs at least {MIN_PASSWORD} characters")


# --- audit ---------------------------------------------------------------------------------------
def audit(
    store: Store,
    *,
    user: str,
    role: str,
    action: str,
    target: str = "",
    args: Mapping[str, Any] | None = None,
    outcome: str,
    detail: str = "",
    remote: str = "",
) -> int:
    """One row of the audit trail; its id (an action in progress is updated by `audit_done`)."""

    def write(tx: Tx) -> int:
        row = tx.one(
            "INSERT INTO panel_audit (at, user_name, role, action, target, args, outcome,"
            " detail, remote) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (_now_iso(), user, role, action, target,
             json.dumps(dict(args or {}), ensure_ascii=False, sort_keys=True), outcome,
             detail[:2000], remote),
        )  # fmt: skip
        assert row is not None
        return int(row[0])

    return store.write(write)


def audit_done(store: Store, row: int, outcome: str, detail: str) -> None:
    store.execute(
        "UPDATE panel_audit SET outcome = ?, detail = ? WHERE id = ?", (outcome, detail[:2000], row)
    )


def recent_audit(store: Store, limit: int = 200) -> list[tuple[Any, ...]]:
    """(id, at, user, role, action, target, args, outcome, detail, remote), newest first."""
    return store.rows(
        "SELECT id, at, user_name, role, action, target, args, outcome, detail, remote"
        " FROM panel_audit ORDER BY id DESC LIMIT ?",
        (limit,),
    )
