"""A process that competes for a lease (run by tests/central/test_store.py).

``python -m tests.central.lease_worker URL NAME ROUNDS``: takes the lease ``job`` in a loop; each
time it holds it, it logs ``start``, renews it a few times as the coverage job does day by day,
logs ``end`` and releases it. It stops once it has held the lease ROUNDS times and has seen
another worker hold it at least once, so the workers really competed.
"""

from __future__ import annotations

import sys

from central.store import open_store


def main(url: str, name: str, rounds: int) -> int:
    store = open_store(url, name=name)
    held = 0
    try:
        while True:
            if store.take_lease("job", name, 30.0):
                store.execute("INSERT INTO lease_log (holder, event) VALUES (?, 'start')", (name,))
                for _ in range(3):
                    if not store.take_lease("job", name, 30.0):
                        print(f"{name}: lost a lease it held", file=sys.stderr)
                        return 1
                store.execute("INSERT INTO lease_log (holder, event) VALUES (?, 'end')", (name,))
                store.release_lease("job", name)
                held += 1
            (others,) = store.rows(
                "SELECT count(*) FROM lease_log WHERE holder <> ? AND event = 'start'", (name,)
            )[0]
            if held >= rounds and others > 0:
                return 0
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
