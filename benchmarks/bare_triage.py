"""A bare Python triage: the least a Python tool built on connfix's libraries does to
fix the standard lab incident, for the time-to-healthy benchmark.

With the same libraries as connfix (psycopg, fabric/paramiko) and nothing else: the
diagnosis query (connfix's own, as the floor's psql runs it), the app host holding the
most of the service's sessions chosen, one SSH login to it (host key checked, on
bare_roll's socket without Nagle or delayed ACKs, as connfix's), its
restart command, then the database polled until that host's old sessions are gone and
its pool is back. No journal, report, terminal, inventory, runbook, lock, preflight or
health gates.

    python benchmarks/bare_triage.py SPEC.json

SPEC: {"dsn", "query" (the diagnosis query's file), "user", "key", "known_hosts",
"restart", "app", "pool"}.
"""

import json
import sys
import time
from collections import Counter

import psycopg
from bare_roll import BACKENDS, login, run


def main() -> None:
    with open(sys.argv[1]) as file:
        spec = json.load(file)
    with open(spec["query"]) as file:
        query = file.read()
    db = psycopg.connect(spec["dsn"], autocommit=True)
    cursor = db.execute(query)
    names = [column.name for column in cursor.description or []]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    held = Counter(
        str(row["client_addr"]) for row in rows if row["application_name"] == spec["app"]
    )
    leaker = held.most_common(1)[0][0]

    def sessions() -> set[int]:
        return {row[0] for row in db.execute(BACKENDS, (leaker, spec["app"]))}

    old = sessions()
    conn = login(leaker, spec)
    if run(conn, spec["restart"])[0] != 0:
        sys.exit("the restart command failed")
    while True:  # its old sessions gone, its pool back
        now = sessions()
        if not now & old and len(now) == spec["pool"]:
            break
        time.sleep(0.005)
    conn.close()
    db.close()
    print(json.dumps({"restarted": leaker}))


if __name__ == "__main__":
    main()
