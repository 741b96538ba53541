"""`meterlink central panel` — serve the operators' panel; `... panel users` — manage its users.

meterlink central panel --config central.toml
meterlink central panel users add NAME --role operator --config central.toml
meterlink central panel users passwd NAME --config central.toml
meterlink central panel users role NAME viewer --config central.toml
meterlink central panel users remove NAME --config central.toml
meterlink central panel users list --config central.toml
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from pathlib import Path

from central.config import CentralConfig

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="central TOML config ([panel], [store], ...)")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="panel_action", metavar="users")
    users = sub.add_parser("users", help="add, change, remove and list the panel's users")
    what = users.add_subparsers(dest="users_action", required=True, metavar="ACTION")

    def leaf(name: str, help_text: str) -> argparse.ArgumentParser:
        p = what.add_parser(name, help=help_text)
        p.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="central TOML config")
        return p

    add = leaf("add", "a new user (the password is asked for, or read from stdin)")
    add.add_argument("name")
    add.add_argument("--role", choices=["viewer", "operator", "admin"], required=True)
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    pw = leaf("passwd", "a new password (the user's sessions end)")
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    role = leaf("role", "change a user's role (from the next request on)")
    role.add_argument("name")
    role.add_argument("role", choices=["viewer", "operator", "admin"])
    rm = leaf("remove", "remove a user (their sessions end)")
    rm.add_argument("name")
    leaf("list", "list the users and their roles")


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the passwords differ")
    return first


def run(cfg: CentralConfig, args: argparse.Namespace) -> int:
    from central.store import open_store

    store = open_store(
        cfg.store.url,
        password=cfg.store.password,
        connect_timeout_s=cfg.store.connect_timeout_s,
        name="meterlink central panel",
    )
    try:
        if args.panel_action == "users":
            return _users(store, args)
        return _serve(cfg, store, args.log_level)
    finally:
        store.close()


def _users(store: object, args: argparse.Namespace) -> int:
    from central.panel.auth import AuthError, Users
    from central.store import Store

    assert isinstance(store, Store)
    users = Users(store)
    try:
        match args.users_action:
            case "add":
                users.add(args.name, args.role, _password(args))
                print(f"user {args.name} added ({args.role})")
            case "passwd":
                users.passwd(args.name, _password(args))
                print(f"password of {args.name} changed; their sessions ended")
            case "role":
                users.set_role(args.name, args.role)
                print(f"{args.name} is {args.role} now")
            case "remove":
                users.remove(args.name)
                print(f"user {args.name} removed")
            case _:
                rows = users.list()
                if not rows:
                    print("no users yet: meterlink central panel users add NAME --role operator")
                for name, role, created, changed in rows:
                    print(f"{name:<24} {role:<9} created {created}  changed {changed}")
    except (AuthError, ValueError) as exc:
        print(f"meterlink central panel users: {exc}", file=sys.stderr)
        return 2
    return 0


def _serve(cfg: CentralConfig, store: object, level: str) -> int:
    import signal

    from central.panel.app import serve
    from central.store import Store
    from protocols.commands import key_bytes

    assert isinstance(store, Store)
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    key = key_bytes(cfg.mqtt.command_key.reveal()) if cfg.mqtt.command_key else None
    if key is None:
        logging.getLogger("central.panel").warning(
            "no command key (METERLINK_MQTT_COMMAND_KEY): operators cannot send commands"
        )

    def ready(url: str) -> None:
        print(f"panel {url}", flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await serve(cfg, store, key, stop, ready)

    asyncio.run(main())
    return 0
