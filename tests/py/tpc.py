"""psycopg's two-phase commit API through the proxy (tests/client_twophase.rs): tpc_begin,
writes on several shards, tpc_prepare, tpc_recover, and tpc_commit / tpc_rollback from
another connection (each action is a run of its own, so the Rust side can look at the
shards in between).

usage: tpc.py HOST PORT prepare GTRID ID...   prints "gid=<the prepared transaction id>"
       tpc.py HOST PORT commit GTRID          tpc_commit from a new connection
       tpc.py HOST PORT rollback GTRID        tpc_rollback from a new connection
       tpc.py HOST PORT one-connection GTRID ID...   prepare and commit on one connection,
                                              plus the errors psycopg maps (42710, 42704)
"""
import sys

import psycopg
from psycopg import errors

host, port, action, gtrid = sys.argv[1:5]
ids = [int(x) for x in sys.argv[5:]]
conninfo = f"host={host} port={port} user=app password=app-secret dbname=app"


def check(ok, what):
    if not ok:
        raise AssertionError(what)


def recovered(conn):
    """The Xids tpc_recover lists with this gtrid (psycopg's own query, through the proxy)."""
    return [x for x in conn.tpc_recover() if x.gtrid == gtrid]


def prepare(conn):
    xid = conn.xid(77, gtrid, "branch-1")
    conn.tpc_begin(xid)
    for i in ids:
        conn.execute("INSERT INTO tpc_users (id, name) VALUES (%s, %s)", (i, f"u{i}"))
    conn.tpc_prepare()
    check(conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE, "idle after prepare")
    return xid


if action == "prepare":
    with psycopg.connect(conninfo) as c:
        xid = prepare(c)
        with psycopg.connect(conninfo) as other:
            found = recovered(other)
            check(len(found) == 1, f"tpc_recover lists {gtrid}: {found}")
            x = found[0]
            check((x.format_id, x.bqual) == (77, "branch-1"), f"recovered xid {x}")
        print(f"gid={xid}")
        # Leaving the connection does not end a prepared transaction.
        c.close()
    print("tpc prepare done")
elif action in ("commit", "rollback"):
    with psycopg.connect(conninfo) as c:
        found = recovered(c)
        check(len(found) == 1, f"tpc_recover lists {gtrid}: {found}")
        if action == "commit":
            c.tpc_commit(found[0])
        else:
            c.tpc_rollback(found[0])
        check(recovered(c) == [], f"{gtrid} still listed after tpc_{action}")
        # Twice: the transaction is gone, as in Postgres.
        try:
            c.tpc_commit(found[0])
            raise AssertionError("second tpc_commit worked")
        except errors.UndefinedObject as e:
            check(e.sqlstate == "42704", e.sqlstate)
    print(f"tpc {action} done")
elif action == "one-connection":
    with psycopg.connect(conninfo) as c:
        prepare(c)
        # The same gid again, from another connection: 42710, and nothing of it stays.
        # (Not `with`: psycopg still counts d in its two-phase transaction and refuses
        # the commit() that `with` ends with.)
        d = psycopg.connect(conninfo)
        d.tpc_begin(d.xid(77, gtrid, "branch-1"))
        d.execute("INSERT INTO tpc_users (id, name) VALUES (%s, 'dup')", (ids[0] + 100000,))
        try:
            d.tpc_prepare()
            raise AssertionError("a duplicate gid was prepared")
        except errors.DuplicateObject as e:
            check(e.sqlstate == "42710", e.sqlstate)
        check(d.info.transaction_status == psycopg.pq.TransactionStatus.IDLE, "idle after")
        d.close()
        c.tpc_commit()
        n = c.execute("SELECT count(*) FROM tpc_users WHERE id = ANY(%s)", (ids,)).fetchone()[0]
        check(n == len(ids), f"{n} of {len(ids)} rows after tpc_commit")
        c.commit()
        n = c.execute("SELECT count(*) FROM tpc_users WHERE name = 'dup'").fetchone()[0]
        check(n == 0, "the duplicate's row was rolled back")
        c.commit()
        try:
            c.tpc_rollback(c.xid(77, gtrid + "-unknown", "b"))
            raise AssertionError("tpc_rollback of an unknown xid worked")
        except errors.UndefinedObject as e:
            check(e.sqlstate == "42704", e.sqlstate)
    print("tpc one-connection done")
else:
    sys.exit(f"unknown action {action}")
