"""LISTEN/NOTIFY through the proxy (issue 19) with real drivers: psycopg 3's
`conn.notifies()` and notify handlers, asyncpg's `add_listener` (LISTEN through the extended
protocol) and its pool's reset (`UNLISTEN *`). Notifications inside a transaction arrive at
its COMMIT, never after a ROLLBACK.

usage: notify.py HOST PORT
"""
import asyncio
import sys

import asyncpg
import psycopg

host, port = sys.argv[1], sys.argv[2]
conninfo = f"host={host} port={port} user=app password=app-secret dbname=app"


def check(ok, what):
    if not ok:
        raise AssertionError(what)


def received(conn, wait=5.0, n=1):
    return [(x.channel, x.payload) for x in conn.notifies(timeout=wait, stop_after=n)]


# psycopg 3
listener = psycopg.connect(conninfo, autocommit=True)
listener.execute("LISTEN py_chan")
sender = psycopg.connect(conninfo, autocommit=True)
sender.execute("NOTIFY py_chan, 'hello'")
got = received(listener)
check(got == [("py_chan", "hello")], f"NOTIFY: {got}")
sender.execute("SELECT pg_notify(%s, %s)", ("py_chan", "bound"))
got = received(listener)
check(got == [("py_chan", "bound")], f"pg_notify with parameters: {got}")
with sender.transaction():
    sender.execute("SELECT pg_notify(%s, %s)", ("py_chan", "in-txn"))
    got = received(listener, wait=0.3)
    check(got == [], f"before COMMIT: {got}")
got = received(listener)
check(got == [("py_chan", "in-txn")], f"at COMMIT: {got}")
try:
    with sender.transaction():
        sender.execute("NOTIFY py_chan, 'rolled-back'")
        raise RuntimeError("roll back")
except RuntimeError:
    pass
got = received(listener, wait=0.3)
check(got == [], f"after ROLLBACK: {got}")
# A notification to oneself is there right after the statement.
listener.execute("NOTIFY py_chan, 'self'")
got = received(listener, wait=0.5)
check(got == [("py_chan", "self")], f"to oneself: {got}")
# Notify handlers see notifications that arrive during other statements.
seen = []
listener.add_notify_handler(lambda n: seen.append(n.payload))
sender.execute("NOTIFY py_chan, 'handled'")
for _ in range(50):
    listener.execute("SELECT 1")
    if seen:
        break
    listener.execute("SELECT pg_sleep(0.05)")
check("handled" in seen, f"handler: {seen}")
listener.execute("UNLISTEN py_chan")
sender.execute("NOTIFY py_chan, 'unheard'")
got = received(listener, wait=0.3)
check(got == [], f"after UNLISTEN: {got}")
listener.close()
sender.close()


# asyncpg
async def asyncpg_checks():
    args = dict(host=host, port=int(port), user="app", password="app-secret", database="app")
    con = await asyncpg.connect(**args)
    other = await asyncpg.connect(**args)
    q = asyncio.Queue()

    def on_note(_conn, pid, channel, payload):
        q.put_nowait((pid, channel, payload))

    await con.add_listener("apg_chan", on_note)
    await other.execute("SELECT pg_notify($1, $2)", "apg_chan", "x1")
    pid, channel, payload = await asyncio.wait_for(q.get(), 5)
    check((channel, payload) == ("apg_chan", "x1") and pid != 0, f"asyncpg: {channel} {payload} {pid}")
    async with other.transaction():
        await other.execute("NOTIFY apg_chan, 'x2'")
        await asyncio.sleep(0.3)
        check(q.empty(), "asyncpg: before COMMIT")
    _, _, payload = await asyncio.wait_for(q.get(), 5)
    check(payload == "x2", f"asyncpg at COMMIT: {payload}")
    await con.remove_listener("apg_chan", on_note)
    await other.execute("NOTIFY apg_chan, 'x3'")
    await asyncio.sleep(0.3)
    check(q.empty(), "asyncpg: after remove_listener")

    # A pool resets a released connection with `UNLISTEN *` among other statements.
    pool = await asyncpg.create_pool(min_size=1, max_size=1, **args)
    pq = asyncio.Queue()
    async with pool.acquire() as c:
        await c.add_listener("pool_chan", lambda *a: pq.put_nowait(a[3]))
        await other.execute("NOTIFY pool_chan, 'p1'")
        check(await asyncio.wait_for(pq.get(), 5) == "p1", "pool listener")
    async with pool.acquire() as c:
        check(await c.fetchval("SELECT 1") == 1, "pool reuse")
    await pool.close()
    await con.close()
    await other.close()


asyncio.run(asyncpg_checks())
print("notify checks passed")
