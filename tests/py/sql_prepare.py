"""SQL PREPARE / EXECUTE (issue 19) as psycopg 3 code sends them: raw SQL without bind
parameters and with client-side binding (ClientCursor) go as simple Query messages and run;
server-side binding sends EXECUTE through the extended protocol, which the proxy refuses
with a clear 0A000. Statements survive ROLLBACK (as in Postgres) and follow transactions
across pooled backends. The table sp_items(id bigint, name text, qty int) exists.

usage: sql_prepare.py CONNINFO ID,ID,... (9 ids, 3 per shard)
"""
import sys

import psycopg
from psycopg import errors

conninfo, ids = sys.argv[1], [int(i) for i in sys.argv[2].split(",")]


def check(ok, what):
    if not ok:
        raise AssertionError(what)


# Not autocommit: psycopg sends BEGIN before the first statement of each transaction.
with psycopg.connect(conninfo) as conn:
    conn.execute(
        "PREPARE ins(bigint, text, int) AS INSERT INTO sp_items (id, name, qty) VALUES ($1, $2, $3)"
    )
    for i in ids[:3]:
        cur = conn.execute(f"EXECUTE ins({i}, 'row {i}', {i})")
        check(cur.statusmessage == "INSERT 0 1", cur.statusmessage)
    conn.commit()

    # Client-side binding: psycopg writes the values into the text (simple protocol).
    with psycopg.ClientCursor(conn) as cur:
        for i in ids[3:6]:
            cur.execute("EXECUTE ins(%s, %s, %s)", (i, f"it's {i}", i))
        cur.execute("PREPARE get(bigint) AS SELECT name, qty FROM sp_items WHERE id = $1")
        cur.execute("EXECUTE get(%s)", (ids[4],))
        check(cur.fetchall() == [(f"it's {ids[4]}", ids[4])], "client-side bound EXECUTE")
    conn.commit()

    # Server-side binding: EXECUTE through the extended protocol is refused.
    try:
        conn.execute("EXECUTE get(%s)", (ids[0],))
        raise AssertionError("EXECUTE with server-side binding was not refused")
    except errors.FeatureNotSupported as e:
        check("simple Query" in str(e), str(e))
    conn.rollback()

    # A rolled-back write is gone; the statement stays.
    conn.execute(f"EXECUTE ins({ids[6]}, 'rolled back', 0)")
    conn.rollback()
    with conn.transaction():
        for i in ids[6:]:
            conn.execute(f"EXECUTE ins({i}, 'in a block', 0)")
    conn.commit()
    rows = conn.execute("SELECT count(*) FROM sp_items WHERE name = 'in a block'").fetchone()
    check(rows == (3,), f"block rows {rows}")
    conn.commit()

    # Postgres's errors.
    try:
        conn.execute("EXECUTE get(1, 2)")
        raise AssertionError("wrong argument count accepted")
    except errors.SyntaxError as e:
        check(e.diag.message_detail == "Expected 1 parameters but got 2.", str(e.diag.message_detail))
    conn.rollback()
    conn.execute("DEALLOCATE get")
    conn.commit()
    try:
        conn.execute(f"EXECUTE get({ids[0]})")
        raise AssertionError("deallocated statement ran")
    except errors.InvalidSqlStatementName:
        pass
    conn.rollback()

    # Every row, through one more EXECUTE across shards (merged, ordered).
    conn.autocommit = True
    conn.execute("PREPARE everything AS SELECT id FROM sp_items ORDER BY id")
    got = [r[0] for r in conn.execute("EXECUTE everything").fetchall()]
    check(got == sorted(ids), f"rows {got}")
    conn.execute("DISCARD ALL")

print("sql_prepare checks passed")
