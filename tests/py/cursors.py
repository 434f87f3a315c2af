"""Named (server-side) cursors over queries that span shards, through the proxy (issue 19):
psycopg 3 (extended protocol: DECLARE with bound parameters, Describe of the cursor's
portal, FETCH FORWARD n in text and binary) and psycopg2 (simple protocol), with and without
WITH HOLD, and the proxy's memory while 100,000 sorted rows are fetched 1,000 at a time.

usage: cursors.py HOST PORT PROXY_PID   (cu_big(id, grp, name): ids 1..100000, grp = id % 7)
"""
import sys

import psycopg
import psycopg2
import sqlalchemy as sa

host, port, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
url = f"postgresql://app:app-secret@{host}:{port}/app"
N = 100_000


def check(ok, what):
    if not ok:
        raise AssertionError(what)


def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# psycopg 3, inside a transaction (its default): 100,000 rows in order, 1,000 at a time.
with psycopg.connect(url) as conn:
    cur = conn.cursor("big")
    cur.execute("SELECT id, name FROM cu_big ORDER BY id")
    expect = 1
    samples = []
    while True:
        rows = cur.fetchmany(1000)
        if not rows:
            break
        check(rows[0][0] == expect and rows[-1][0] == expect + len(rows) - 1, f"page at {expect}")
        check(rows[0][1] == f"name-{expect}", f"name at {expect}")
        expect += len(rows)
        if expect in (5001, 25001, 50001, 75001, N + 1):
            samples.append(rss_kib())
    check(expect == N + 1, f"all rows: {expect - 1}")
    cur.close()
    growth = samples[-1] - samples[0]
    print(f"rss KiB at 5k/25k/50k/75k/100k rows: {samples} (growth {growth} KiB)")
    # Flat: no more than 16 MiB between the 5,000th and the last row (the rows are ~2.5 MB
    # as text; a proxy holding them all would grow by far more than a chunk per shard).
    check(growth < 16 * 1024, f"proxy RSS grew by {growth} KiB while fetching")
    conn.commit()

    # Bound parameters, DESC order, binary rows.
    cur = conn.cursor("p", binary=True)
    cur.execute("SELECT id, grp FROM cu_big WHERE grp = %s AND id <= %s ORDER BY id DESC", (3, 1000))
    got = [r[0] for r in cur.fetchmany(50)] + [r[0] for r in cur.fetchall()]
    want = [i for i in range(1000, 0, -1) if i % 7 == 3]
    check(got == want, "bound parameters, DESC, binary")
    cur.close()
    # scroll() forward (MOVE) and a second cursor at the same time.
    a = conn.cursor("a")
    b = conn.cursor("b")
    a.execute("SELECT id FROM cu_big ORDER BY id")
    b.execute("SELECT id FROM cu_big ORDER BY id DESC LIMIT 10")
    a.scroll(10)
    check(a.fetchone() == (11,), "scroll then fetch")
    check([r[0] for r in b.fetchall()] == list(range(N, N - 10, -1)), "second cursor")
    check(a.fetchmany(2) == [(12,), (13,)], "first cursor goes on")
    conn.rollback()

    # WITH HOLD under autocommit (what Django's .iterator() declares): fetched outside any
    # transaction, with other statements and a transaction between the fetches.
    conn.autocommit = True
    h = conn.cursor("h", withhold=True)
    h.execute("SELECT id FROM cu_big WHERE id <= 3000 ORDER BY id")
    seen = []
    other = conn.cursor()
    while True:
        rows = h.fetchmany(700)
        if not rows:
            break
        seen += [r[0] for r in rows]
        other.execute("SELECT count(*) FROM cu_big WHERE id <= 3")
        check(other.fetchone() == (3,), "other statement between fetches")
        with conn.transaction():
            other.execute("UPDATE cu_big SET name = name WHERE id = %s", (seen[-1],))
    check(seen == list(range(1, 3001)), "WITH HOLD cursor rows")
    h.close()
    other.execute("SELECT 1")
    check(other.fetchone() == (1,), "session usable after CLOSE")

# A cursor on one shard inside a transaction that holds others first: its DECLARE, Describe,
# FETCH and CLOSE reach the shard it lives on (psycopg 3 extended, psycopg2 simple).
with psycopg.connect(url) as conn:
    for b in range(2, 9):
        cur = conn.cursor()
        cur.execute("SELECT name FROM cu_big WHERE id = %s", (1,))
        one = conn.cursor(f"one{b}")
        one.execute("SELECT id, name FROM cu_big WHERE id = %s", (b,))
        check(one.fetchall() == [(b, f"name-{b}")], f"single-shard cursor {b}")
        one.close()
        # The key written in the text: the DECLARE is forwarded to its shard as it is.
        lit = conn.cursor(f"lit{b}")
        lit.execute(f"SELECT id FROM cu_big WHERE id = {b}")
        check(lit.fetchall() == [(b,)], f"single-shard cursor, literal key {b}")
        lit.close()
        conn.commit()
conn = psycopg2.connect(url)
for b in range(2, 9):
    cur = conn.cursor()
    cur.execute("SELECT name FROM cu_big WHERE id = %s", (1,))
    one = conn.cursor(f"one{b}")
    one.execute("SELECT id FROM cu_big WHERE id = %s", (b,))
    check(one.fetchall() == [(b,)], f"psycopg2 single-shard cursor {b}")
    one.close()
    conn.commit()
conn.close()

# psycopg2: named cursors through the simple protocol, in a transaction and WITH HOLD.
conn = psycopg2.connect(url)
cur = conn.cursor("c2")
cur.itersize = 2000
cur.execute("SELECT id, grp FROM cu_big WHERE id > %s ORDER BY grp, id", (N - 5000,))
rows = list(cur)
want = sorted(((i, i % 7) for i in range(N - 4999, N + 1)), key=lambda r: (r[1], r[0]))
check(rows == want, "psycopg2 named cursor")
conn.commit()
conn.autocommit = True
cur = conn.cursor("h2", withhold=True)
cur.itersize = 500
cur.execute("SELECT id FROM cu_big WHERE id <= 1200 ORDER BY id DESC")
check([r[0] for r in cur] == list(range(1200, 0, -1)), "psycopg2 WITH HOLD")
cur.close()
conn.close()
# asyncpg's cursor: a portal executed 1,000 rows at a time inside a transaction, paged by
# the proxy from cursors of its own on the shards (memory flat again).
import asyncio

import asyncpg


async def asyncpg_cursor():
    conn = await asyncpg.connect(url)
    async with conn.transaction():
        expect = N
        samples = []
        async for r in conn.cursor("SELECT id, name FROM cu_big ORDER BY id DESC", prefetch=1000):
            check(r["id"] == expect and r["name"] == f"name-{expect}", f"asyncpg row {expect}")
            expect -= 1
            if expect in (N - 5000, N // 2, 0):
                samples.append(rss_kib())
        check(expect == 0, f"asyncpg rows: {N - expect}")
        growth = samples[-1] - samples[0]
        print(f"asyncpg cursor rss KiB: {samples} (growth {growth} KiB)")
        check(growth < 16 * 1024, f"proxy RSS grew by {growth} KiB (asyncpg cursor)")
        cur = await conn.cursor("SELECT id FROM cu_big WHERE grp = $1 ORDER BY id", 5)
        first = await cur.fetch(3)
        check([r[0] for r in first] == [5, 12, 19], "asyncpg cursor fetch with a parameter")
        await cur.forward(2)
        check((await cur.fetchrow())[0] == 40, "asyncpg cursor forward")
    await conn.close()


asyncio.run(asyncpg_cursor())

# SQLAlchemy yield_per (stream_results: a named cursor of the dialect's driver).
for drv in ("psycopg", "psycopg2"):
    engine = sa.create_engine(f"postgresql+{drv}://app:app-secret@{host}:{port}/app")
    with engine.connect() as c:
        res = c.execution_options(yield_per=500).execute(
            sa.text("SELECT id FROM cu_big WHERE id <= 5000 ORDER BY id DESC")
        )
        got = [r[0] for r in res]
    check(got == list(range(5000, 0, -1)), f"SQLAlchemy {drv} yield_per")
    engine.dispose()
print("cursor checks passed")
