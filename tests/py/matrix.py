"""The driver matrix (tests/driver_matrix.md) for the Python drivers: the 12 scenarios —
connect, ddl, crud, prepared, multi_shard_read, txn_one_shard, txn_two_shards, batch, copy,
concurrency, cancel, statement_timeout — through the proxy with each driver's own API:
psycopg 3 (sync, async, and pipeline mode), psycopg2, asyncpg, and SQLAlchemy 2 (Core and
ORM) over psycopg 3 and over asyncpg. Every cell asserts values, row counts and SQLSTATEs;
a cell prints `CELL <scenario> ok` (or `n/a <why>` where the driver has no such API), and
the run ends with `matrix done`. A failure prints what was expected and what came, and
exits non-zero.

usage: matrix.py DRIVER URL IDS BATCH_IDS
  DRIVER     psycopg | psycopg-async | psycopg-pipeline | psycopg2 | asyncpg |
             sqlalchemy-psycopg | sqlalchemy-asyncpg
  URL        postgresql://app:app-secret@127.0.0.1:PORT/app
  IDS        3 ids, IDS[s] on shard s
  BATCH_IDS  50 ids on one shard
"""
import asyncio
import faulthandler
import inspect
import io
import sys
import threading
import time
import traceback

SCENARIOS = [
    "connect",
    "ddl",
    "crud",
    "prepared",
    "multi_shard_read",
    "txn_one_shard",
    "txn_two_shards",
    "batch",
    "copy",
    "concurrency",
    "cancel",
    "statement_timeout",
]

CREATE = "CREATE TABLE items (id bigint PRIMARY KEY, grp int NOT NULL, v text)"
MULTI = range(1001, 1101)  # multi_shard_read: grp = id % 5, v = m<id>
GROUPS = [(g, 20) for g in range(5)]
TOP3 = [1100, 1099, 1098]
SUM = sum(MULTI)  # 105050
ANY_IDS = [1001, 1050, 1099]
ANY_ROWS = sorted((i, f"m{i}") for i in ANY_IDS)
COPY_IDS = range(2001, 2301)  # copy: grp = 8, v = c<id>
CONC_IDS = range(3001, 3021)  # concurrency: worker w owns 3001 + w
CONC_SECS = 3.0


def eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: expected {want!r}, got {got!r}")


def check(ok, what):
    if not ok:
        raise AssertionError(what)


def sqlstate(exc):
    """The SQLSTATE of a driver error (psycopg `sqlstate`, psycopg2 `pgcode`, asyncpg
    `sqlstate`), looking through SQLAlchemy's wrapper (`orig`) and adapters (`__cause__`)."""
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        for attr in ("sqlstate", "pgcode"):
            v = getattr(exc, attr, None)
            if isinstance(v, str) and v:
                return v
        exc = getattr(exc, "orig", None) or exc.__cause__
    return None


def expect_state(exc, state, what):
    eq(sqlstate(exc), state, f"{what}: SQLSTATE of {type(exc).__name__}: {exc}")


def tuples(rows):
    return [tuple(r) for r in rows]


def csv_copy_data():
    return "".join(f"{i},8,c{i}\n" for i in COPY_IDS)


# --------------------------------------------------------------------------------------
# DB-API drivers on libpq: psycopg 3 (sync) and psycopg2 share the statements; each has its
# own transaction, prepare, COPY and error API.


def q(conn, sql, params=None):
    cur = conn.cursor()
    cur.execute(sql, params)
    return cur


class DbApi:
    def __init__(self, url, ids, batch):
        self.url, self.ids, self.batch_ids = url, ids, batch

    def rows(self, sql, params=None):
        return tuples(q(self.conn, sql, params).fetchall())

    def count(self, sql, params=None):
        return q(self.conn, sql, params).rowcount

    def v_of(self, key):
        return self.rows("SELECT v FROM items WHERE id = %s", (key,))

    def connect(self):
        self.conn = self.open()
        eq(self.rows("SELECT 1"), [(1,)], "SELECT 1")
        check(self.server_version() > 0, f"server_version {self.server_version()!r}")
        (ver,), = self.rows("SHOW server_version")
        check(ver, f"SHOW server_version {ver!r}")

    def ddl(self):
        q(self.conn, "DROP TABLE IF EXISTS items")
        q(self.conn, CREATE)
        eq(self.rows("SELECT count(*) FROM items"), [(0,)], "count(*) of the new table")

    def crud(self):
        for i in self.ids:
            eq(self.count("INSERT INTO items (id, grp, v) VALUES (%s, %s, %s)", (i, 1, f"v{i}")),
               1, f"INSERT {i} row count")
            eq(self.v_of(i), [(f"v{i}",)], f"SELECT v of {i}")
            eq(self.count("UPDATE items SET v = %s WHERE id = %s", (f"u{i}", i)), 1,
               f"UPDATE {i} row count")
            eq(self.v_of(i), [(f"u{i}",)], f"SELECT v of {i} after UPDATE")
        last = self.ids[2]
        eq(self.count("DELETE FROM items WHERE id = %s", (last,)), 1, f"DELETE {last}")
        eq(self.v_of(last), [], f"SELECT {last} after DELETE")
        eq(self.count("INSERT INTO items (id, grp, v) VALUES (%s, %s, %s)", (last, 1, f"u{last}")),
           1, f"re-INSERT {last}")
        eq(self.rows("INSERT INTO items (id, grp, v) VALUES (%s, %s, %s) RETURNING id",
                     (900, 0, "r900")), [(900,)], "INSERT ... RETURNING id")
        eq(self.count("DELETE FROM items WHERE id = %s", (900,)), 1, "DELETE 900")

    def check_grp_11(self):
        for i in self.ids:
            eq(self.rows("SELECT grp FROM items WHERE id = %s", (i,)), [(11,)],
               f"grp of {i} after 30 prepared UPDATEs")

    def insert_multi(self):
        for i in MULTI:
            eq(self.count("INSERT INTO items (id, grp, v) VALUES (%s, %s, %s)",
                          (i, i % 5, f"m{i}")), 1, f"INSERT {i}")

    def multi_reads(self, rows):
        """The merged reads; `rows(sql, params)` runs one and returns its rows."""
        eq(rows("SELECT count(*) FROM items WHERE id BETWEEN %s AND %s", (1001, 1100)),
           [(100,)], "count(*) BETWEEN")
        eq(rows("SELECT grp, count(*) FROM items WHERE id BETWEEN 1001 AND 1100 "
                "GROUP BY grp ORDER BY grp"), GROUPS, "GROUP BY grp")
        eq(rows("SELECT id FROM items WHERE id BETWEEN 1001 AND 1100 ORDER BY id DESC LIMIT 3"),
           [(i,) for i in TOP3], "ORDER BY id DESC LIMIT 3")
        eq(rows("SELECT sum(id) FROM items WHERE id BETWEEN 1001 AND 1100"), [(SUM,)], "sum(id)")
        eq(sorted(rows("SELECT id, v FROM items WHERE id = ANY(%s)", (ANY_IDS,))), ANY_ROWS,
           "id = ANY(array)")

    def multi_shard_read(self):
        self.insert_multi()
        self.multi_reads(self.rows)

    def txn(self, keys, tag):
        """a) commit, b) rollback, c) an error (duplicate key of keys[-1]) then rollback,
        each updating every key in `keys`; the driver's begin_commit / begin_rollback /
        begin_fail give the transaction."""
        def set_v(v):
            for k in keys:
                eq(self.count("UPDATE items SET v = %s WHERE id = %s", (v, k)), 1, f"UPDATE {k}")

        def read_all(v, when):
            for k in keys:
                eq(self.v_of(k), [(v,)], f"v of {k} {when}")

        committed = f"c{tag}"
        self.begin_commit(lambda: set_v(committed))
        read_all(committed, "after COMMIT")

        def rolled():
            set_v(f"r{tag}")
            read_all(f"r{tag}", "inside the transaction")
        self.begin_rollback(rolled)
        read_all(committed, "after ROLLBACK")

        def failing():
            set_v(f"e{tag}")
            self.count("INSERT INTO items (id, grp, v) VALUES (%s, %s, %s)", (keys[-1], 0, "dup"))
        err = self.begin_fail(failing)
        expect_state(err, "23505", "duplicate INSERT in the transaction")
        read_all(committed, "after the failed transaction")
        eq(self.rows("SELECT 1"), [(1,)], "SELECT 1 after the failed transaction")

    def txn_one_shard(self):
        self.txn(self.ids[:1], 1)

    def txn_two_shards(self):
        self.txn(self.ids[:2], 2)

    def batch_rows(self):
        return [(i, 7, f"b{i}") for i in self.batch_ids]

    def batch_check(self):
        eq(self.rows("SELECT count(*) FROM items WHERE grp = 7"), [(50,)], "count of grp 7")
        eq(self.count("DELETE FROM items WHERE grp = %s", (7,)), 50, "DELETE grp 7 row count")

    def batch(self):
        cur = self.conn.cursor()
        cur.executemany("INSERT INTO items (id, grp, v) VALUES (%s, %s, %s)", self.batch_rows())
        eq(cur.rowcount, 50, "executemany row count")
        self.batch_check()

    def copy_check(self, tag):
        eq(tag, 300, "COPY row count")
        eq(self.rows("SELECT count(*) FROM items WHERE grp = 8"), [(300,)], "count of grp 8")
        eq(self.v_of(2150), [("c2150",)], "v of 2150")

    def insert_conc(self):
        for i in CONC_IDS:
            eq(self.count("INSERT INTO items (id, grp, v) VALUES (%s, %s, %s)", (i, 0, f"w{i}")),
               1, f"INSERT {i}")

    def conc_step(self, conn, key, n):
        """One worker round: UPDATE its row, then read its own count back."""
        eq(q(conn, "UPDATE items SET grp = grp + 1 WHERE id = %s", (key,)).rowcount, 1,
           f"UPDATE {key}")
        eq(tuples(q(conn, "SELECT grp FROM items WHERE id = %s", (key,)).fetchall()), [(n,)],
           f"grp of {key}")

    def concurrency(self):
        self.insert_conc()
        conns = [self.open() for _ in CONC_IDS]
        counts, errors = [0] * len(conns), []
        start = threading.Barrier(len(conns))

        def work(w):
            key, n = CONC_IDS[w], 0
            try:
                start.wait()
                deadline = time.monotonic() + CONC_SECS
                while time.monotonic() < deadline:
                    n += 1
                    self.conc_step(conns[w], key, n)
            except BaseException as e:  # reported below with the worker
                errors.append(f"worker {w} (id {key}) after {n - 1} updates: "
                              f"{type(e).__name__}: {e}")
            counts[w] = n
        threads = [threading.Thread(target=work, args=(w,)) for w in range(len(conns))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(CONC_SECS + 15)
        check(not any(t.is_alive() for t in threads), "a concurrency worker hung")
        for c in conns:
            c.close()
        check(not errors, "concurrency errors:\n  " + "\n  ".join(errors))
        got = dict(self.rows("SELECT id, grp FROM items WHERE id BETWEEN 3001 AND 3020"))
        eq(got, {CONC_IDS[w]: counts[w] for w in range(len(conns))}, "each worker's row")
        check(sum(counts) > 0, "no updates")
        print(f"concurrency ops={sum(counts)}", flush=True)

    def cancel(self):
        timer = threading.Timer(0.3, self.conn.cancel)
        t0 = time.monotonic()
        timer.start()
        try:
            q(self.conn, "SELECT pg_sleep(5)")
            raise AssertionError("pg_sleep(5) was not cancelled")
        except self.Error as e:
            took = time.monotonic() - t0
            expect_state(e, "57014", "cancelled pg_sleep(5)")
        timer.join()
        check(took < 3, f"cancel took {took:.2f}s")
        eq(self.rows("SELECT 1"), [(1,)], "SELECT 1 after the cancel")

    def statement_timeout(self):
        q(self.conn, "SET statement_timeout = 300")
        t0 = time.monotonic()
        try:
            q(self.conn, "SELECT pg_sleep(2)")
            raise AssertionError("pg_sleep(2) ran past statement_timeout = 300")
        except self.Error as e:
            took = time.monotonic() - t0
            expect_state(e, "57014", "pg_sleep(2) under statement_timeout")
        check(took < 1.5, f"statement_timeout fired after {took:.2f}s")
        q(self.conn, "RESET statement_timeout")
        eq(self.rows("SHOW statement_timeout"), [("0",)], "statement_timeout after RESET")
        eq(self.rows("SELECT pg_sleep(0.5)"), [("",)], "pg_sleep(0.5) after RESET")

    def close(self):
        self.conn.close()


class Psycopg(DbApi):
    """psycopg 3, blocking, autocommit connections; transactions with conn.transaction()."""

    def __init__(self, *a):
        super().__init__(*a)
        import psycopg
        self.pg = psycopg
        self.Error = psycopg.Error

    def open(self):
        return self.pg.connect(self.url, autocommit=True)

    def server_version(self):
        return self.conn.info.server_version

    def prepared(self):
        cur = self.conn.cursor()
        for n in range(100):
            i = self.ids[n % 3]
            cur.execute("SELECT v FROM items WHERE id = %s", (i,), prepare=True)
            eq(tuples(cur.fetchall()), [(f"u{i}",)], f"prepared SELECT #{n} (id {i})")
        for n in range(30):
            i = self.ids[n % 3]
            cur.execute("UPDATE items SET grp = grp + 1 WHERE id = %s", (i,), prepare=True)
            eq(cur.rowcount, 1, f"prepared UPDATE #{n} (id {i})")
        self.check_grp_11()

    def begin_commit(self, body):
        with self.conn.transaction():
            body()

    def begin_rollback(self, body):
        with self.conn.transaction() as tx:
            body()
            raise self.pg.Rollback(tx)

    def begin_fail(self, body):
        try:
            with self.conn.transaction():
                body()
        except self.pg.Error as e:
            return e
        raise AssertionError("the transaction's duplicate INSERT did not fail")

    def copy(self):
        cur = self.conn.cursor()
        with cur.copy("COPY items (id, grp, v) FROM STDIN") as cp:
            for i in COPY_IDS:
                cp.write_row((i, 8, f"c{i}"))
        self.copy_check(cur.rowcount)


class PsycopgPipeline(Psycopg):
    """psycopg 3 in pipeline mode (`with conn.pipeline():`) wherever a scenario's statements
    can share one pipeline on one shard: crud (one pipeline per key), prepared (one per
    key), multi_shard_read (one INSERT per pipeline, each merged read alone in one),
    txn_one_shard, batch, and each concurrency round. Results are read inside the pipeline
    where a program would (psycopg sends a Flush), the rest after its Sync. ddl, the
    two-shard transactions (statements on two shards before one Sync: issue 19), COPY (not
    allowed in a pipeline), cancel and statement_timeout run as with plain psycopg."""

    def crud(self):
        c = self.conn
        ins = "INSERT INTO items (id, grp, v) VALUES (%s, %s, %s)"
        sel = "SELECT v FROM items WHERE id = %s"
        for i in self.ids:
            with c.pipeline():
                a = c.cursor().execute(ins, (i, 1, f"v{i}"))
                eq(tuples(c.cursor().execute(sel, (i,)).fetchall()), [(f"v{i}",)],
                   f"SELECT v of {i} in the pipeline")
                b = c.cursor().execute("UPDATE items SET v = %s WHERE id = %s", (f"u{i}", i))
                d = c.cursor().execute(sel, (i,))
            eq(a.rowcount, 1, f"INSERT {i} row count")
            eq(b.rowcount, 1, f"UPDATE {i} row count")
            eq(tuples(d.fetchall()), [(f"u{i}",)], f"SELECT v of {i} after UPDATE")
        last = self.ids[2]
        with c.pipeline():
            a = c.cursor().execute("DELETE FROM items WHERE id = %s", (last,))
            b = c.cursor().execute(sel, (last,))
            d = c.cursor().execute(ins, (last, 1, f"u{last}"))
        eq(a.rowcount, 1, f"DELETE {last}")
        eq(tuples(b.fetchall()), [], f"SELECT {last} after DELETE")
        eq(d.rowcount, 1, f"re-INSERT {last}")
        with c.pipeline():
            a = c.cursor().execute(ins + " RETURNING id", (900, 0, "r900"))
            eq(tuples(a.fetchall()), [(900,)], "INSERT ... RETURNING id")
            b = c.cursor().execute("DELETE FROM items WHERE id = %s", (900,))
        eq(b.rowcount, 1, "DELETE 900")

    def prepared(self):
        c = self.conn
        for i in self.ids:
            with c.pipeline():
                sels = [c.cursor().execute("SELECT v FROM items WHERE id = %s", (i,),
                                           prepare=True)
                        for _ in range(34 if i == self.ids[0] else 33)]
                upds = [c.cursor().execute("UPDATE items SET grp = grp + 1 WHERE id = %s", (i,),
                                           prepare=True) for _ in range(10)]
            for n, cur in enumerate(sels):
                eq(tuples(cur.fetchall()), [(f"u{i}",)], f"prepared SELECT #{n} of id {i}")
            for n, cur in enumerate(upds):
                eq(cur.rowcount, 1, f"prepared UPDATE #{n} of id {i}")
        self.check_grp_11()

    def multi_shard_read(self):
        c = self.conn
        for i in MULTI:
            with c.pipeline():
                cur = c.cursor().execute("INSERT INTO items (id, grp, v) VALUES (%s, %s, %s)",
                                         (i, i % 5, f"m{i}"))
            eq(cur.rowcount, 1, f"INSERT {i}")

        def alone(sql, params=None):
            with c.pipeline():
                return tuples(c.cursor().execute(sql, params).fetchall())
        self.multi_reads(alone)

    def txn_one_shard(self):
        c, key = self.conn, self.ids[0]
        upd = "UPDATE items SET v = %s WHERE id = %s"
        with c.pipeline():
            with c.transaction():
                a = c.cursor().execute(upd, ("c1", key))
        eq(a.rowcount, 1, f"UPDATE {key}")
        eq(self.v_of(key), [("c1",)], "after COMMIT")
        with c.pipeline():
            with c.transaction() as tx:
                a = c.cursor().execute(upd, ("r1", key))
                eq(tuples(c.cursor().execute("SELECT v FROM items WHERE id = %s", (key,))
                          .fetchall()), [("r1",)], "inside the transaction")
                raise self.pg.Rollback(tx)
        eq(a.rowcount, 1, f"UPDATE {key}")
        eq(self.v_of(key), [("c1",)], "after ROLLBACK")
        try:
            with c.pipeline():
                with c.transaction():
                    c.cursor().execute(upd, ("e1", key))
                    c.cursor().execute("INSERT INTO items (id, grp, v) VALUES (%s, %s, %s)",
                                       (key, 0, "dup"))
            raise AssertionError("the pipelined duplicate INSERT did not fail")
        except self.pg.Error as e:
            expect_state(e, "23505", "pipelined duplicate INSERT")
        eq(self.v_of(key), [("c1",)], "after the failed transaction")
        eq(self.rows("SELECT 1"), [(1,)], "SELECT 1 after the failed transaction")

    def batch(self):
        with self.conn.pipeline():
            cur = self.conn.cursor()
            cur.executemany("INSERT INTO items (id, grp, v) VALUES (%s, %s, %s)",
                            self.batch_rows())
        eq(cur.rowcount, 50, "executemany row count")
        self.batch_check()

    def conc_step(self, conn, key, n):
        with conn.pipeline():
            a = conn.cursor().execute("UPDATE items SET grp = grp + 1 WHERE id = %s", (key,))
            b = conn.cursor().execute("SELECT grp FROM items WHERE id = %s", (key,))
        eq(a.rowcount, 1, f"UPDATE {key}")
        eq(tuples(b.fetchall()), [(n,)], f"grp of {key}")


class Psycopg2(DbApi):
    """psycopg2 (libpq, client-side parameters, simple protocol); transactions with
    autocommit off and `with conn:`."""

    def __init__(self, *a):
        super().__init__(*a)
        import psycopg2
        import psycopg2.errors  # noqa: F401
        self.pg = psycopg2
        self.Error = psycopg2.Error

    def open(self):
        conn = self.pg.connect(self.url)
        conn.autocommit = True
        return conn

    def server_version(self):
        return self.conn.server_version

    def prepared(self):
        return "psycopg2 has no prepared-statement API"

    def in_txn(self, body):
        self.conn.autocommit = False
        try:
            with self.conn:  # commits, or rolls back on an exception
                body()
        finally:
            self.conn.autocommit = True

    def begin_commit(self, body):
        self.in_txn(body)

    def begin_rollback(self, body):
        self.conn.autocommit = False
        try:
            body()
            self.conn.rollback()
        finally:
            self.conn.autocommit = True

    def begin_fail(self, body):
        try:
            self.in_txn(body)
        except self.pg.Error as e:
            return e
        raise AssertionError("the transaction's duplicate INSERT did not fail")

    def copy(self):
        cur = self.conn.cursor()
        cur.copy_expert("COPY items (id, grp, v) FROM STDIN WITH (FORMAT csv)",
                        io.StringIO(csv_copy_data()))
        self.copy_check(cur.rowcount)


# --------------------------------------------------------------------------------------
# psycopg 3 AsyncConnection.


class PsycopgAsync:
    """psycopg 3 AsyncConnection, autocommit; `async with conn.transaction()`."""

    def __init__(self, url, ids, batch):
        import psycopg
        self.pg, self.url, self.ids, self.batch_ids = psycopg, url, ids, batch

    async def open(self):
        return await self.pg.AsyncConnection.connect(self.url, autocommit=True)

    async def rows(self, sql, params=None, conn=None):
        cur = await (conn or self.conn).execute(sql, params)
        return tuples(await cur.fetchall())

    async def count(self, sql, params=None, conn=None):
        return (await (conn or self.conn).execute(sql, params)).rowcount

    async def v_of(self, key):
        return await self.rows("SELECT v FROM items WHERE id = %s", (key,))

    async def connect(self):
        self.conn = await self.open()
        eq(await self.rows("SELECT 1"), [(1,)], "SELECT 1")
        check(self.conn.info.server_version > 0, "server_version")
        (ver,), = await self.rows("SHOW server_version")
        check(ver, f"SHOW server_version {ver!r}")

    async def ddl(self):
        await self.conn.execute("DROP TABLE IF EXISTS items")
        await self.conn.execute(CREATE)
        eq(await self.rows("SELECT count(*) FROM items"), [(0,)], "count(*) of the new table")

    async def crud(self):
        ins = "INSERT INTO items (id, grp, v) VALUES (%s, %s, %s)"
        for i in self.ids:
            eq(await self.count(ins, (i, 1, f"v{i}")), 1, f"INSERT {i} row count")
            eq(await self.v_of(i), [(f"v{i}",)], f"SELECT v of {i}")
            eq(await self.count("UPDATE items SET v = %s WHERE id = %s", (f"u{i}", i)), 1,
               f"UPDATE {i} row count")
            eq(await self.v_of(i), [(f"u{i}",)], f"SELECT v of {i} after UPDATE")
        last = self.ids[2]
        eq(await self.count("DELETE FROM items WHERE id = %s", (last,)), 1, f"DELETE {last}")
        eq(await self.v_of(last), [], f"SELECT {last} after DELETE")
        eq(await self.count(ins, (last, 1, f"u{last}")), 1, f"re-INSERT {last}")
        eq(await self.rows(ins + " RETURNING id", (900, 0, "r900")), [(900,)],
           "INSERT ... RETURNING id")
        eq(await self.count("DELETE FROM items WHERE id = %s", (900,)), 1, "DELETE 900")

    async def prepared(self):
        cur = self.conn.cursor()
        for n in range(100):
            i = self.ids[n % 3]
            await cur.execute("SELECT v FROM items WHERE id = %s", (i,), prepare=True)
            eq(tuples(await cur.fetchall()), [(f"u{i}",)], f"prepared SELECT #{n} (id {i})")
        for n in range(30):
            i = self.ids[n % 3]
            await cur.execute("UPDATE items SET grp = grp + 1 WHERE id = %s", (i,), prepare=True)
            eq(cur.rowcount, 1, f"prepared UPDATE #{n} (id {i})")
        for i in self.ids:
            eq(await self.rows("SELECT grp FROM items WHERE id = %s", (i,)), [(11,)],
               f"grp of {i} after 30 prepared UPDATEs")

    async def multi_shard_read(self):
        for i in MULTI:
            eq(await self.count("INSERT INTO items (id, grp, v) VALUES (%s, %s, %s)",
                                (i, i % 5, f"m{i}")), 1, f"INSERT {i}")
        eq(await self.rows("SELECT count(*) FROM items WHERE id BETWEEN %s AND %s",
                           (1001, 1100)), [(100,)], "count(*) BETWEEN")
        eq(await self.rows("SELECT grp, count(*) FROM items WHERE id BETWEEN 1001 AND 1100 "
                           "GROUP BY grp ORDER BY grp"), GROUPS, "GROUP BY grp")
        eq(await self.rows("SELECT id FROM items WHERE id BETWEEN 1001 AND 1100 "
                           "ORDER BY id DESC LIMIT 3"), [(i,) for i in TOP3], "ORDER BY LIMIT 3")
        eq(await self.rows("SELECT sum(id) FROM items WHERE id BETWEEN 1001 AND 1100"),
           [(SUM,)], "sum(id)")
        eq(sorted(await self.rows("SELECT id, v FROM items WHERE id = ANY(%s)", (ANY_IDS,))),
           ANY_ROWS, "id = ANY(array)")

    async def txn(self, keys, tag):
        async def set_v(v):
            for k in keys:
                eq(await self.count("UPDATE items SET v = %s WHERE id = %s", (v, k)), 1,
                   f"UPDATE {k}")

        async def read_all(v, when):
            for k in keys:
                eq(await self.v_of(k), [(v,)], f"v of {k} {when}")

        committed = f"c{tag}"
        async with self.conn.transaction():
            await set_v(committed)
        await read_all(committed, "after COMMIT")
        async with self.conn.transaction() as tx:
            await set_v(f"r{tag}")
            await read_all(f"r{tag}", "inside the transaction")
            raise self.pg.Rollback(tx)
        await read_all(committed, "after ROLLBACK")
        try:
            async with self.conn.transaction():
                await set_v(f"e{tag}")
                await self.conn.execute("INSERT INTO items (id, grp, v) VALUES (%s, %s, %s)",
                                        (keys[-1], 0, "dup"))
            raise AssertionError("the transaction's duplicate INSERT did not fail")
        except self.pg.Error as e:
            expect_state(e, "23505", "duplicate INSERT in the transaction")
        await read_all(committed, "after the failed transaction")
        eq(await self.rows("SELECT 1"), [(1,)], "SELECT 1 after the failed transaction")

    async def txn_one_shard(self):
        await self.txn(self.ids[:1], 1)

    async def txn_two_shards(self):
        await self.txn(self.ids[:2], 2)

    async def batch(self):
        cur = self.conn.cursor()
        await cur.executemany("INSERT INTO items (id, grp, v) VALUES (%s, %s, %s)",
                              [(i, 7, f"b{i}") for i in self.batch_ids])
        eq(cur.rowcount, 50, "executemany row count")
        eq(await self.rows("SELECT count(*) FROM items WHERE grp = 7"), [(50,)], "count of grp 7")
        eq(await self.count("DELETE FROM items WHERE grp = %s", (7,)), 50, "DELETE grp 7")

    async def copy(self):
        cur = self.conn.cursor()
        async with cur.copy("COPY items (id, grp, v) FROM STDIN") as cp:
            for i in COPY_IDS:
                await cp.write_row((i, 8, f"c{i}"))
        eq(cur.rowcount, 300, "COPY row count")
        eq(await self.rows("SELECT count(*) FROM items WHERE grp = 8"), [(300,)], "count grp 8")
        eq(await self.v_of(2150), [("c2150",)], "v of 2150")

    async def concurrency(self):
        for i in CONC_IDS:
            eq(await self.count("INSERT INTO items (id, grp, v) VALUES (%s, %s, %s)",
                                (i, 0, f"w{i}")), 1, f"INSERT {i}")
        conns = await asyncio.gather(*(self.open() for _ in CONC_IDS))

        async def work(w, deadline):
            key, n = CONC_IDS[w], 0
            try:
                while time.monotonic() < deadline:
                    n += 1
                    eq(await self.count("UPDATE items SET grp = grp + 1 WHERE id = %s", (key,),
                                        conns[w]), 1, f"UPDATE {key}")
                    eq(await self.rows("SELECT grp FROM items WHERE id = %s", (key,), conns[w]),
                       [(n,)], f"grp of {key}")
                return n
            except Exception as e:
                raise AssertionError(f"worker {w} (id {key}) after {n - 1} updates: "
                                     f"{type(e).__name__}: {e}") from e
        deadline = time.monotonic() + CONC_SECS
        counts = await asyncio.wait_for(
            asyncio.gather(*(work(w, deadline) for w in range(len(conns)))), CONC_SECS + 15)
        for c in conns:
            await c.close()
        got = dict(await self.rows("SELECT id, grp FROM items WHERE id BETWEEN 3001 AND 3020"))
        eq(got, dict(zip(CONC_IDS, counts)), "each worker's row")
        check(sum(counts) > 0, "no updates")
        print(f"concurrency ops={sum(counts)}", flush=True)

    async def cancel(self):
        t0 = time.monotonic()
        sleeper = asyncio.create_task(self.conn.execute("SELECT pg_sleep(5)"))
        await asyncio.sleep(0.3)
        await self.conn.cancel_safe()
        try:
            await asyncio.wait_for(sleeper, 10)
            raise AssertionError("pg_sleep(5) was not cancelled")
        except self.pg.Error as e:
            took = time.monotonic() - t0
            expect_state(e, "57014", "cancelled pg_sleep(5)")
        check(took < 3, f"cancel took {took:.2f}s")
        eq(await self.rows("SELECT 1"), [(1,)], "SELECT 1 after the cancel")

    async def statement_timeout(self):
        await self.conn.execute("SET statement_timeout = 300")
        t0 = time.monotonic()
        try:
            await self.conn.execute("SELECT pg_sleep(2)")
            raise AssertionError("pg_sleep(2) ran past statement_timeout = 300")
        except self.pg.Error as e:
            took = time.monotonic() - t0
            expect_state(e, "57014", "pg_sleep(2) under statement_timeout")
        check(took < 1.5, f"statement_timeout fired after {took:.2f}s")
        await self.conn.execute("RESET statement_timeout")
        eq(await self.rows("SHOW statement_timeout"), [("0",)], "statement_timeout after RESET")
        eq(await self.rows("SELECT pg_sleep(0.5)"), [("",)], "pg_sleep(0.5) after RESET")

    async def close(self):
        await self.conn.close()


# --------------------------------------------------------------------------------------
# asyncpg


class Asyncpg:
    """asyncpg: $n parameters, conn.prepare, conn.transaction(), executemany,
    copy_to_table(format='csv'), a pool of 20, cancel by timeout=."""

    def __init__(self, url, ids, batch):
        import asyncpg
        self.apg, self.url, self.ids, self.batch_ids = asyncpg, url, ids, batch

    async def v_of(self, key):
        return tuples(await self.conn.fetch("SELECT v FROM items WHERE id = $1", key))

    async def connect(self):
        self.conn = await self.apg.connect(self.url)
        eq(await self.conn.fetchval("SELECT 1"), 1, "SELECT 1")
        check(self.conn.get_server_version().major > 0, str(self.conn.get_server_version()))
        ver = await self.conn.fetchval("SHOW server_version")
        check(ver, f"SHOW server_version {ver!r}")

    async def ddl(self):
        await self.conn.execute("DROP TABLE IF EXISTS items")
        await self.conn.execute(CREATE)
        eq(await self.conn.fetchval("SELECT count(*) FROM items"), 0, "count(*) of the new table")

    async def crud(self):
        c = self.conn
        ins = "INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)"
        for i in self.ids:
            eq(await c.execute(ins, i, 1, f"v{i}"), "INSERT 0 1", f"INSERT {i}")
            eq(await self.v_of(i), [(f"v{i}",)], f"SELECT v of {i}")
            eq(await c.execute("UPDATE items SET v = $1 WHERE id = $2", f"u{i}", i), "UPDATE 1",
               f"UPDATE {i}")
            eq(await self.v_of(i), [(f"u{i}",)], f"SELECT v of {i} after UPDATE")
        last = self.ids[2]
        eq(await c.execute("DELETE FROM items WHERE id = $1", last), "DELETE 1", f"DELETE {last}")
        eq(await c.fetchrow("SELECT v FROM items WHERE id = $1", last), None,
           f"SELECT {last} after DELETE")
        eq(await c.execute(ins, last, 1, f"u{last}"), "INSERT 0 1", f"re-INSERT {last}")
        eq(await c.fetchval(ins + " RETURNING id", 900, 0, "r900"), 900, "INSERT ... RETURNING id")
        eq(await c.execute("DELETE FROM items WHERE id = $1", 900), "DELETE 1", "DELETE 900")

    async def prepared(self):
        sel = await self.conn.prepare("SELECT v FROM items WHERE id = $1")
        for n in range(100):
            i = self.ids[n % 3]
            eq(await sel.fetchval(i), f"u{i}", f"prepared SELECT #{n} (id {i})")
        upd = await self.conn.prepare("UPDATE items SET grp = grp + 1 WHERE id = $1")
        for n in range(30):
            i = self.ids[n % 3]
            eq(await upd.fetch(i), [], f"prepared UPDATE #{n} rows")
            eq(upd.get_statusmsg(), "UPDATE 1", f"prepared UPDATE #{n} (id {i})")
        for i in self.ids:
            eq(await sel.fetchval(i), f"u{i}", f"v of {i}")
            eq(await self.conn.fetchval("SELECT grp FROM items WHERE id = $1", i), 11,
               f"grp of {i} after 30 prepared UPDATEs")

    async def multi_shard_read(self):
        c = self.conn
        for i in MULTI:
            eq(await c.execute("INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)",
                               i, i % 5, f"m{i}"), "INSERT 0 1", f"INSERT {i}")
        eq(await c.fetchval("SELECT count(*) FROM items WHERE id BETWEEN $1 AND $2", 1001, 1100),
           100, "count(*) BETWEEN")
        eq(tuples(await c.fetch("SELECT grp, count(*) FROM items WHERE id BETWEEN 1001 AND 1100 "
                                "GROUP BY grp ORDER BY grp")), GROUPS, "GROUP BY grp")
        eq([r["id"] for r in await c.fetch("SELECT id FROM items WHERE id BETWEEN 1001 AND 1100 "
                                           "ORDER BY id DESC LIMIT 3")], TOP3, "ORDER BY LIMIT 3")
        eq(await c.fetchval("SELECT sum(id) FROM items WHERE id BETWEEN 1001 AND 1100"), SUM,
           "sum(id)")
        eq(sorted(tuples(await c.fetch("SELECT id, v FROM items WHERE id = ANY($1)", ANY_IDS))),
           ANY_ROWS, "id = ANY($1)")

    async def txn(self, keys, tag):
        c = self.conn

        async def set_v(v):
            for k in keys:
                eq(await c.execute("UPDATE items SET v = $1 WHERE id = $2", v, k), "UPDATE 1",
                   f"UPDATE {k}")

        async def read_all(v, when):
            for k in keys:
                eq(await self.v_of(k), [(v,)], f"v of {k} {when}")

        committed = f"c{tag}"
        async with c.transaction():
            await set_v(committed)
        await read_all(committed, "after COMMIT")
        tr = c.transaction()
        await tr.start()
        await set_v(f"r{tag}")
        await read_all(f"r{tag}", "inside the transaction")
        await tr.rollback()
        await read_all(committed, "after ROLLBACK")
        try:
            async with c.transaction():
                await set_v(f"e{tag}")
                await c.execute("INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)",
                                keys[-1], 0, "dup")
            raise AssertionError("the transaction's duplicate INSERT did not fail")
        except self.apg.PostgresError as e:
            expect_state(e, "23505", "duplicate INSERT in the transaction")
        await read_all(committed, "after the failed transaction")
        eq(await c.fetchval("SELECT 1"), 1, "SELECT 1 after the failed transaction")

    async def txn_one_shard(self):
        await self.txn(self.ids[:1], 1)

    async def txn_two_shards(self):
        await self.txn(self.ids[:2], 2)

    async def batch(self):
        c = self.conn
        await c.executemany("INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)",
                            [(i, 7, f"b{i}") for i in self.batch_ids])
        eq(await c.fetchval("SELECT count(*) FROM items WHERE grp = 7"), 50, "count of grp 7")
        eq(await c.execute("DELETE FROM items WHERE grp = $1", 7), "DELETE 50", "DELETE grp 7")

    async def copy(self):
        c = self.conn
        status = await c.copy_to_table("items", source=io.BytesIO(csv_copy_data().encode()),
                                       columns=["id", "grp", "v"], format="csv")
        eq(status, "COPY 300", "copy_to_table status")
        eq(await c.fetchval("SELECT count(*) FROM items WHERE grp = 8"), 300, "count of grp 8")
        eq(await c.fetchval("SELECT v FROM items WHERE id = $1", 2150), "c2150", "v of 2150")

    async def concurrency(self):
        for i in CONC_IDS:
            eq(await self.conn.execute("INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)",
                                       i, 0, f"w{i}"), "INSERT 0 1", f"INSERT {i}")
        self.pool = await self.apg.create_pool(self.url, min_size=20, max_size=20)

        async def work(w, deadline):
            key, n = CONC_IDS[w], 0
            try:
                async with self.pool.acquire() as c:
                    while time.monotonic() < deadline:
                        n += 1
                        eq(await c.execute("UPDATE items SET grp = grp + 1 WHERE id = $1", key),
                           "UPDATE 1", f"UPDATE {key}")
                        eq(await c.fetchval("SELECT grp FROM items WHERE id = $1", key), n,
                           f"grp of {key}")
                return n
            except Exception as e:
                raise AssertionError(f"worker {w} (id {key}) after {n - 1} updates: "
                                     f"{type(e).__name__}: {e}") from e
        deadline = time.monotonic() + CONC_SECS
        counts = await asyncio.wait_for(
            asyncio.gather(*(work(w, deadline) for w in range(len(CONC_IDS)))), CONC_SECS + 15)
        got = dict(tuples(await self.conn.fetch(
            "SELECT id, grp FROM items WHERE id BETWEEN 3001 AND 3020")))
        eq(got, dict(zip(CONC_IDS, counts)), "each worker's row")
        check(sum(counts) > 0, "no updates")
        print(f"concurrency ops={sum(counts)}", flush=True)

    async def cancel(self):
        # asyncpg's cancel API is the query timeout (or task cancellation): on expiry it sends
        # a CancelRequest and raises TimeoutError; the server's 57014 reply is consumed by
        # the driver, and the connection's next query waits for it — so a prompt next query
        # shows the server did cancel.
        async with self.pool.acquire() as c:
            t0 = time.monotonic()
            try:
                await c.fetchval("SELECT pg_sleep(5)", timeout=0.3)
                raise AssertionError("pg_sleep(5) was not cancelled")
            except asyncio.TimeoutError:
                pass
            eq(await c.fetchval("SELECT 1"), 1, "SELECT 1 after the timeout")
            took = time.monotonic() - t0
            check(took < 3, f"timeout cancel: the next query came after {took:.2f}s")
            # The 57014 itself, with the Knex-style cancel: pg_cancel_backend(pid) from
            # another pool connection.
            pid = await c.fetchval("SELECT pg_backend_pid()")
            t0 = time.monotonic()
            sleeper = asyncio.create_task(c.fetchval("SELECT pg_sleep(5)"))
            await asyncio.sleep(0.3)
            async with self.pool.acquire() as other:
                eq(await other.fetchval("SELECT pg_cancel_backend($1)", pid), True,
                   "pg_cancel_backend")
            try:
                await asyncio.wait_for(sleeper, 10)
                raise AssertionError("pg_sleep(5) was not cancelled by pg_cancel_backend")
            except self.apg.PostgresError as e:
                took = time.monotonic() - t0
                expect_state(e, "57014", "pg_sleep(5) cancelled by pg_cancel_backend")
            check(took < 3, f"pg_cancel_backend took {took:.2f}s")
            eq(await c.fetchval("SELECT 1"), 1, "SELECT 1 after the cancel")
        eq(await self.pool.fetchval("SELECT 2"), 2, "the pool after the cancel")
        await self.pool.close()

    async def statement_timeout(self):
        c = self.conn
        await c.execute("SET statement_timeout = 300")
        t0 = time.monotonic()
        try:
            await c.execute("SELECT pg_sleep(2)")
            raise AssertionError("pg_sleep(2) ran past statement_timeout = 300")
        except self.apg.PostgresError as e:
            took = time.monotonic() - t0
            expect_state(e, "57014", "pg_sleep(2) under statement_timeout")
        check(took < 1.5, f"statement_timeout fired after {took:.2f}s")
        await c.execute("RESET statement_timeout")
        eq(await c.fetchval("SHOW statement_timeout"), "0", "statement_timeout after RESET")
        eq(await c.fetchval("SELECT pg_sleep(0.5)"), None, "pg_sleep(0.5) after RESET")

    async def close(self):
        await self.conn.close()


# --------------------------------------------------------------------------------------
# SQLAlchemy 2: Core for statements, the ORM for transactions and the batch.


def sa_model():
    import sqlalchemy as sa
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = "items"
        id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
        grp: Mapped[int]
        v: Mapped[str | None] = mapped_column(sa.Text)
    return Item, Item.__table__


def sa_url(url, dialect):
    return f"postgresql+{dialect}://" + url.split("://", 1)[1]


class SaStatements:
    """The Core statements both SQLAlchemy drivers run."""

    def __init__(self, url, ids, batch):
        import sqlalchemy as sa
        from sqlalchemy.dialects import postgresql
        self.sa, self.url, self.ids, self.batch_ids = sa, url, ids, batch
        self.Item, self.items = sa_model()
        t = self.items
        self.sel_v = sa.select(t.c.v).where(t.c.id == sa.bindparam("k"))
        self.upd_v = sa.update(t).where(t.c.id == sa.bindparam("k")).values(v=sa.bindparam("nv"))
        self.bump = sa.update(t).where(t.c.id == sa.bindparam("k")).values(grp=t.c.grp + 1)
        self.sel_grp = sa.select(t.c.grp).where(t.c.id == sa.bindparam("k"))
        between = t.c.id.between(1001, 1100)
        self.reads = [
            (sa.select(sa.func.count()).select_from(t).where(between), [(100,)], "count(*)"),
            (sa.select(t.c.grp, sa.func.count()).where(between).group_by(t.c.grp)
             .order_by(t.c.grp), GROUPS, "GROUP BY grp"),
            (sa.select(t.c.id).where(between).order_by(t.c.id.desc()).limit(3),
             [(i,) for i in TOP3], "ORDER BY id DESC LIMIT 3"),
            (sa.select(sa.func.sum(t.c.id)).where(between), [(SUM,)], "sum(id)"),
            (sa.select(t.c.id, t.c.v).where(t.c.id == sa.any_(
                sa.bindparam("ids", ANY_IDS, type_=postgresql.ARRAY(sa.BigInteger))))
             .order_by(t.c.id), ANY_ROWS, "id = ANY(array)"),
            (sa.select(t.c.id, t.c.v).where(t.c.id.in_(ANY_IDS)).order_by(t.c.id), ANY_ROWS,
             "id IN (...)"),
        ]


class SaPsycopg(SaStatements):
    """SQLAlchemy 2 over psycopg 3 (`postgresql+psycopg://`), a pool of 20."""

    def __init__(self, *a):
        super().__init__(*a)
        self.engine = self.sa.create_engine(sa_url(self.url, "psycopg"), pool_size=20,
                                            max_overflow=0)

    def v_of(self, c, key):
        return tuples(c.execute(self.sel_v, {"k": key}).all())

    def connect(self):
        with self.engine.connect() as c:
            eq(c.execute(self.sa.text("SELECT 1")).scalar_one(), 1, "SELECT 1")
            ver = c.execute(self.sa.text("SHOW server_version")).scalar_one()
            check(ver, f"SHOW server_version {ver!r}")
        check(self.engine.dialect.server_version_info, "dialect server_version_info")

    def ddl(self):
        text = self.sa.text
        with self.engine.begin() as c:
            c.execute(text("DROP TABLE IF EXISTS items"))
            c.execute(text(CREATE))
        with self.engine.connect() as c:
            check(self.sa.inspect(c).has_table("items"), "inspect().has_table('items')")
            eq(c.execute(self.sa.select(self.sa.func.count()).select_from(self.items))
               .scalar_one(), 0, "count(*) of the new table")

    def crud(self):
        sa, t = self.sa, self.items
        for i in self.ids:
            with self.engine.begin() as c:
                ins = c.execute(sa.insert(t).values(id=i, grp=1, v=f"v{i}"))
                eq(ins.inserted_primary_key, (i,), f"INSERT {i}")
                eq(self.v_of(c, i), [(f"v{i}",)], f"SELECT v of {i}")
                eq(c.execute(self.upd_v, {"k": i, "nv": f"u{i}"}).rowcount, 1, f"UPDATE {i}")
                eq(self.v_of(c, i), [(f"u{i}",)], f"SELECT v of {i} after UPDATE")
        last = self.ids[2]
        with self.engine.begin() as c:
            eq(c.execute(sa.delete(t).where(t.c.id == last)).rowcount, 1, f"DELETE {last}")
            eq(self.v_of(c, last), [], f"SELECT {last} after DELETE")
            ins = c.execute(sa.insert(t).values(id=last, grp=1, v=f"u{last}"))
            eq(ins.inserted_primary_key, (last,), f"re-INSERT {last}")
        with self.engine.begin() as c:
            eq(c.execute(sa.insert(t).values(id=900, grp=0, v="r900").returning(t.c.id))
               .scalar_one(), 900, "INSERT ... RETURNING id")
            eq(c.execute(sa.delete(t).where(t.c.id == 900)).rowcount, 1, "DELETE 900")

    def prepared(self):
        # psycopg prepares a statement on its 5th execution (prepare_threshold) and keeps it:
        # the driver's automatic statement cache, which is what SQLAlchemy uses.
        with self.engine.connect() as c:
            check(c.connection.driver_connection.prepare_threshold is not None,
                  "psycopg prepare_threshold")
            for n in range(100):
                i = self.ids[n % 3]
                eq(c.execute(self.sel_v, {"k": i}).scalar_one(), f"u{i}",
                   f"SELECT #{n} (id {i})")
            c.commit()
        with self.engine.begin() as c:
            for n in range(30):
                i = self.ids[n % 3]
                eq(c.execute(self.bump, {"k": i}).rowcount, 1, f"UPDATE #{n} (id {i})")
        with self.engine.connect() as c:
            for i in self.ids:
                eq(c.execute(self.sel_grp, {"k": i}).scalar_one(), 11,
                   f"grp of {i} after 30 UPDATEs")

    def multi_shard_read(self):
        sa, t = self.sa, self.items
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            for i in MULTI:
                ins = c.execute(sa.insert(t).values(id=i, grp=i % 5, v=f"m{i}"))
                eq(ins.inserted_primary_key, (i,), f"INSERT {i}")
        with self.engine.connect() as c:
            for stmt, want, what in self.reads:
                eq(tuples(c.execute(stmt).all()), want, what)

    def txn(self, keys, tag):
        from sqlalchemy.orm import Session
        Item, sa = self.Item, self.sa

        def read_all(v, when):
            with self.engine.connect() as c:
                for k in keys:
                    eq(self.v_of(c, k), [(v,)], f"v of {k} {when}")

        committed = f"c{tag}"
        with Session(self.engine) as s:
            with s.begin():
                for k in keys:
                    s.get(Item, k).v = committed
        read_all(committed, "after COMMIT")
        with Session(self.engine) as s:
            for k in keys:
                s.get(Item, k).v = f"r{tag}"
            s.flush()
            for k in keys:
                eq(s.execute(self.sel_v, {"k": k}).scalar_one(), f"r{tag}",
                   f"v of {k} inside the transaction")
            s.rollback()
        read_all(committed, "after ROLLBACK")
        with Session(self.engine) as s:
            try:
                with s.begin():
                    for k in keys:
                        s.get(Item, k).v = f"e{tag}"
                    s.flush()
                    s.execute(sa.insert(self.items).values(id=keys[-1], grp=0, v="dup"))
                raise AssertionError("the transaction's duplicate INSERT did not fail")
            except sa.exc.DBAPIError as e:
                expect_state(e, "23505", "duplicate INSERT in the transaction")
            eq(s.execute(sa.text("SELECT 1")).scalar_one(), 1, "SELECT 1 after the failure")
        read_all(committed, "after the failed transaction")

    def txn_one_shard(self):
        self.txn(self.ids[:1], 1)

    def txn_two_shards(self):
        self.txn(self.ids[:2], 2)

    def batch_check(self, how):
        sa, t = self.sa, self.items
        with self.engine.begin() as c:
            eq(c.execute(sa.select(sa.func.count()).select_from(t).where(t.c.grp == 7))
               .scalar_one(), 50, f"{how}: count of grp 7")
            eq(c.execute(sa.delete(t).where(t.c.grp == 7)).rowcount, 50, f"{how}: DELETE grp 7")

    def batch(self):
        from sqlalchemy.orm import Session
        with Session(self.engine) as s:
            s.add_all([self.Item(id=i, grp=7, v=f"b{i}") for i in self.batch_ids])
            s.commit()
        self.batch_check("session.add_all")
        with self.engine.begin() as c:
            c.execute(self.sa.insert(self.items),
                      [{"id": i, "grp": 7, "v": f"b{i}"} for i in self.batch_ids])
        self.batch_check("conn.execute(insert, [dicts])")

    def copy(self):
        # The DB-API connection SQLAlchemy hands out: psycopg's cursor.copy.
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            with cur.copy("COPY items (id, grp, v) FROM STDIN") as cp:
                for i in COPY_IDS:
                    cp.write_row((i, 8, f"c{i}"))
            eq(cur.rowcount, 300, "COPY row count")
            raw.commit()
        finally:
            raw.close()
        sa, t = self.sa, self.items
        with self.engine.connect() as c:
            eq(c.execute(sa.select(sa.func.count()).select_from(t).where(t.c.grp == 8))
               .scalar_one(), 300, "count of grp 8")
            eq(self.v_of(c, 2150), [("c2150",)], "v of 2150")

    def concurrency(self):
        sa, t = self.sa, self.items
        with self.engine.begin() as c:
            for i in CONC_IDS:  # one statement a row: they span shards
                c.execute(sa.insert(t).values(id=i, grp=0, v=f"w{i}"))
        counts, errors = [0] * len(CONC_IDS), []
        start = threading.Barrier(len(CONC_IDS))

        def work(w):
            key, n = CONC_IDS[w], 0
            try:
                with self.engine.connect() as c:
                    start.wait()
                    deadline = time.monotonic() + CONC_SECS
                    while time.monotonic() < deadline:
                        n += 1
                        eq(c.execute(self.bump, {"k": key}).rowcount, 1, f"UPDATE {key}")
                        eq(c.execute(self.sel_grp, {"k": key}).scalar_one(), n, f"grp of {key}")
                        c.commit()
            except BaseException as e:
                errors.append(f"worker {w} (id {key}) after {n - 1} updates: "
                              f"{type(e).__name__}: {e}")
                start.abort()
            counts[w] = n
        threads = [threading.Thread(target=work, args=(w,)) for w in range(len(CONC_IDS))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(CONC_SECS + 15)
        check(not any(th.is_alive() for th in threads), "a concurrency worker hung")
        check(not errors, "concurrency errors:\n  " + "\n  ".join(errors))
        with self.engine.connect() as c:
            got = dict(tuples(c.execute(sa.select(t.c.id, t.c.grp)
                                        .where(t.c.id.between(3001, 3020))).all()))
        eq(got, dict(zip(CONC_IDS, counts)), "each worker's row")
        check(sum(counts) > 0, "no updates")
        print(f"concurrency ops={sum(counts)}", flush=True)

    def cancel(self):
        # SQLAlchemy has no cancel of its own: the application cancels through the driver
        # connection it holds (psycopg's conn.cancel() from another thread).
        sa = self.sa
        with self.engine.connect() as c:
            timer = threading.Timer(0.3, c.connection.driver_connection.cancel)
            t0 = time.monotonic()
            timer.start()
            try:
                c.execute(sa.text("SELECT pg_sleep(5)"))
                raise AssertionError("pg_sleep(5) was not cancelled")
            except sa.exc.DBAPIError as e:
                took = time.monotonic() - t0
                expect_state(e, "57014", "cancelled pg_sleep(5)")
            timer.join()
            check(took < 3, f"cancel took {took:.2f}s")
            c.rollback()
            eq(c.execute(sa.text("SELECT 1")).scalar_one(), 1, "SELECT 1 after the cancel")

    def statement_timeout(self):
        sa = self.sa
        # The connection option, as applications configure it.
        eng = sa.create_engine(sa_url(self.url, "psycopg"),
                               connect_args={"options": "-c statement_timeout=300"})
        try:
            with eng.connect() as c:
                t0 = time.monotonic()
                try:
                    c.execute(sa.text("SELECT pg_sleep(2)"))
                    raise AssertionError("pg_sleep(2) ran past options statement_timeout=300")
                except sa.exc.DBAPIError as e:
                    took = time.monotonic() - t0
                    expect_state(e, "57014", "pg_sleep(2) under options statement_timeout")
                check(took < 1.5, f"options statement_timeout fired after {took:.2f}s")
                c.rollback()
                eq(c.execute(sa.text("SHOW statement_timeout")).scalar_one(), "300ms",
                   "statement_timeout from the options")
        finally:
            eng.dispose()
        # SET, then RESET, on a pooled connection.
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(sa.text("SET statement_timeout = 300"))
            t0 = time.monotonic()
            try:
                c.execute(sa.text("SELECT pg_sleep(2)"))
                raise AssertionError("pg_sleep(2) ran past statement_timeout = 300")
            except sa.exc.DBAPIError as e:
                took = time.monotonic() - t0
                expect_state(e, "57014", "pg_sleep(2) under statement_timeout")
            check(took < 1.5, f"statement_timeout fired after {took:.2f}s")
            c.execute(sa.text("RESET statement_timeout"))
            eq(c.execute(sa.text("SHOW statement_timeout")).scalar_one(), "0",
               "statement_timeout after RESET")
            eq(c.execute(sa.text("SELECT pg_sleep(0.5)")).scalar_one(), "",
               "pg_sleep(0.5) after RESET")

    def close(self):
        self.engine.dispose()


class SaAsyncpg(SaStatements):
    """SQLAlchemy 2 asyncio over asyncpg (`postgresql+asyncpg://`): AsyncEngine (pool of 20),
    AsyncSession; asyncpg's prepared-statement cache underneath."""

    def __init__(self, *a):
        super().__init__(*a)
        from sqlalchemy.ext.asyncio import create_async_engine
        self.engine = create_async_engine(sa_url(self.url, "asyncpg"), pool_size=20,
                                          max_overflow=0)

    async def v_of(self, c, key):
        return tuples((await c.execute(self.sel_v, {"k": key})).all())

    async def connect(self):
        async with self.engine.connect() as c:
            eq((await c.execute(self.sa.text("SELECT 1"))).scalar_one(), 1, "SELECT 1")
            ver = (await c.execute(self.sa.text("SHOW server_version"))).scalar_one()
            check(ver, f"SHOW server_version {ver!r}")
        check(self.engine.dialect.server_version_info, "dialect server_version_info")

    async def ddl(self):
        text = self.sa.text
        async with self.engine.begin() as c:
            await c.execute(text("DROP TABLE IF EXISTS items"))
            await c.execute(text(CREATE))
        async with self.engine.connect() as c:
            check(await c.run_sync(lambda sc: self.sa.inspect(sc).has_table("items")),
                  "inspect().has_table('items')")
            eq((await c.execute(self.sa.select(self.sa.func.count()).select_from(self.items)))
               .scalar_one(), 0, "count(*) of the new table")

    async def crud(self):
        sa, t = self.sa, self.items
        for i in self.ids:
            async with self.engine.begin() as c:
                ins = await c.execute(sa.insert(t).values(id=i, grp=1, v=f"v{i}"))
                eq(ins.inserted_primary_key, (i,), f"INSERT {i}")
                eq(await self.v_of(c, i), [(f"v{i}",)], f"SELECT v of {i}")
                eq((await c.execute(self.upd_v, {"k": i, "nv": f"u{i}"})).rowcount, 1,
                   f"UPDATE {i}")
                eq(await self.v_of(c, i), [(f"u{i}",)], f"SELECT v of {i} after UPDATE")
        last = self.ids[2]
        async with self.engine.begin() as c:
            eq((await c.execute(sa.delete(t).where(t.c.id == last))).rowcount, 1,
               f"DELETE {last}")
            eq(await self.v_of(c, last), [], f"SELECT {last} after DELETE")
            ins = await c.execute(sa.insert(t).values(id=last, grp=1, v=f"u{last}"))
            eq(ins.inserted_primary_key, (last,), f"re-INSERT {last}")
        async with self.engine.begin() as c:
            eq((await c.execute(sa.insert(t).values(id=900, grp=0, v="r900")
                                .returning(t.c.id))).scalar_one(), 900, "INSERT ... RETURNING id")
            eq((await c.execute(sa.delete(t).where(t.c.id == 900))).rowcount, 1, "DELETE 900")

    async def prepared(self):
        # The asyncpg dialect runs every statement as an asyncpg prepared statement, kept in
        # its per-connection cache (prepared_statement_cache_size, default 100).
        async with self.engine.connect() as c:
            for n in range(100):
                i = self.ids[n % 3]
                eq((await c.execute(self.sel_v, {"k": i})).scalar_one(), f"u{i}",
                   f"SELECT #{n} (id {i})")
            await c.commit()
        async with self.engine.begin() as c:
            for n in range(30):
                i = self.ids[n % 3]
                eq((await c.execute(self.bump, {"k": i})).rowcount, 1, f"UPDATE #{n} (id {i})")
        async with self.engine.connect() as c:
            for i in self.ids:
                eq((await c.execute(self.sel_grp, {"k": i})).scalar_one(), 11,
                   f"grp of {i} after 30 UPDATEs")

    async def multi_shard_read(self):
        sa, t = self.sa, self.items
        async with self.engine.connect() as c:
            c = await c.execution_options(isolation_level="AUTOCOMMIT")
            for i in MULTI:
                ins = await c.execute(sa.insert(t).values(id=i, grp=i % 5, v=f"m{i}"))
                eq(ins.inserted_primary_key, (i,), f"INSERT {i}")
        async with self.engine.connect() as c:
            for stmt, want, what in self.reads:
                eq(tuples((await c.execute(stmt)).all()), want, what)

    async def txn(self, keys, tag):
        from sqlalchemy.ext.asyncio import AsyncSession
        Item, sa = self.Item, self.sa

        async def read_all(v, when):
            async with self.engine.connect() as c:
                for k in keys:
                    eq(await self.v_of(c, k), [(v,)], f"v of {k} {when}")

        committed = f"c{tag}"
        async with AsyncSession(self.engine) as s:
            async with s.begin():
                for k in keys:
                    (await s.get(Item, k)).v = committed
        await read_all(committed, "after COMMIT")
        async with AsyncSession(self.engine) as s:
            for k in keys:
                (await s.get(Item, k)).v = f"r{tag}"
            await s.flush()
            for k in keys:
                eq((await s.execute(self.sel_v, {"k": k})).scalar_one(), f"r{tag}",
                   f"v of {k} inside the transaction")
            await s.rollback()
        await read_all(committed, "after ROLLBACK")
        async with AsyncSession(self.engine) as s:
            try:
                async with s.begin():
                    for k in keys:
                        (await s.get(Item, k)).v = f"e{tag}"
                    await s.flush()
                    await s.execute(sa.insert(self.items).values(id=keys[-1], grp=0, v="dup"))
                raise AssertionError("the transaction's duplicate INSERT did not fail")
            except sa.exc.DBAPIError as e:
                expect_state(e, "23505", "duplicate INSERT in the transaction")
            eq((await s.execute(sa.text("SELECT 1"))).scalar_one(), 1,
               "SELECT 1 after the failure")
        await read_all(committed, "after the failed transaction")

    async def txn_one_shard(self):
        await self.txn(self.ids[:1], 1)

    async def txn_two_shards(self):
        await self.txn(self.ids[:2], 2)

    async def batch_check(self, how):
        sa, t = self.sa, self.items
        async with self.engine.begin() as c:
            eq((await c.execute(sa.select(sa.func.count()).select_from(t).where(t.c.grp == 7)))
               .scalar_one(), 50, f"{how}: count of grp 7")
            eq((await c.execute(sa.delete(t).where(t.c.grp == 7))).rowcount, 50,
               f"{how}: DELETE grp 7")

    async def batch(self):
        from sqlalchemy.ext.asyncio import AsyncSession
        async with AsyncSession(self.engine) as s:
            s.add_all([self.Item(id=i, grp=7, v=f"b{i}") for i in self.batch_ids])
            await s.commit()
        await self.batch_check("session.add_all")
        async with self.engine.begin() as c:
            await c.execute(self.sa.insert(self.items),
                            [{"id": i, "grp": 7, "v": f"b{i}"} for i in self.batch_ids])
        await self.batch_check("conn.execute(insert, [dicts])")

    async def copy(self):
        # The asyncpg connection under SQLAlchemy's adapter: copy_to_table(format='csv').
        sa, t = self.sa, self.items
        async with self.engine.connect() as c:
            raw = await c.get_raw_connection()
            status = await raw.driver_connection.copy_to_table(
                "items", source=io.BytesIO(csv_copy_data().encode()),
                columns=["id", "grp", "v"], format="csv")
            eq(status, "COPY 300", "copy_to_table status")
        async with self.engine.connect() as c:
            eq((await c.execute(sa.select(sa.func.count()).select_from(t).where(t.c.grp == 8)))
               .scalar_one(), 300, "count of grp 8")
            eq(await self.v_of(c, 2150), [("c2150",)], "v of 2150")

    async def concurrency(self):
        sa, t = self.sa, self.items
        async with self.engine.begin() as c:
            for i in CONC_IDS:
                await c.execute(sa.insert(t).values(id=i, grp=0, v=f"w{i}"))
        conns = [await self.engine.connect() for _ in CONC_IDS]

        async def work(w, deadline):
            key, n, c = CONC_IDS[w], 0, conns[w]
            try:
                while time.monotonic() < deadline:
                    n += 1
                    eq((await c.execute(self.bump, {"k": key})).rowcount, 1, f"UPDATE {key}")
                    eq((await c.execute(self.sel_grp, {"k": key})).scalar_one(), n,
                       f"grp of {key}")
                    await c.commit()
                return n
            except Exception as e:
                raise AssertionError(f"worker {w} (id {key}) after {n - 1} updates: "
                                     f"{type(e).__name__}: {e}") from e
        deadline = time.monotonic() + CONC_SECS
        counts = await asyncio.wait_for(
            asyncio.gather(*(work(w, deadline) for w in range(len(conns)))), CONC_SECS + 15)
        for c in conns:
            await c.close()
        async with self.engine.connect() as c:
            got = dict(tuples((await c.execute(sa.select(t.c.id, t.c.grp)
                                               .where(t.c.id.between(3001, 3020)))).all()))
        eq(got, dict(zip(CONC_IDS, counts)), "each worker's row")
        check(sum(counts) > 0, "no updates")
        print(f"concurrency ops={sum(counts)}", flush=True)

    async def cancel(self):
        # asyncio's own cancel: a timeout on the awaited query. asyncpg (under SQLAlchemy)
        # sends a CancelRequest; the connection's next query waits for the cancelled one's
        # reply, so a prompt next query shows the server did cancel.
        sa = self.sa
        async with self.engine.connect() as c:
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(c.execute(sa.text("SELECT pg_sleep(5)")), 0.3)
                raise AssertionError("pg_sleep(5) was not cancelled")
            except asyncio.TimeoutError:
                pass
            await c.rollback()
            eq((await c.execute(sa.text("SELECT 1"))).scalar_one(), 1, "SELECT 1 after timeout")
            took = time.monotonic() - t0
            check(took < 3, f"timeout cancel: the next query came after {took:.2f}s")
            await c.rollback()
            # The 57014 itself: pg_cancel_backend(pid) from another pooled connection.
            pid = (await c.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            t0 = time.monotonic()
            sleeper = asyncio.create_task(c.execute(sa.text("SELECT pg_sleep(5)")))
            await asyncio.sleep(0.3)
            async with self.engine.connect() as other:
                eq((await other.execute(sa.text("SELECT pg_cancel_backend(:pid)"),
                                        {"pid": pid})).scalar_one(), True, "pg_cancel_backend")
            try:
                await asyncio.wait_for(sleeper, 10)
                raise AssertionError("pg_sleep(5) was not cancelled by pg_cancel_backend")
            except sa.exc.DBAPIError as e:
                took = time.monotonic() - t0
                expect_state(e, "57014", "pg_sleep(5) cancelled by pg_cancel_backend")
            check(took < 3, f"pg_cancel_backend took {took:.2f}s")
            await c.rollback()
            eq((await c.execute(sa.text("SELECT 1"))).scalar_one(), 1, "SELECT 1 after cancel")

    async def statement_timeout(self):
        from sqlalchemy.ext.asyncio import create_async_engine
        sa = self.sa
        # asyncpg's server_settings (startup parameters), as applications configure it.
        eng = create_async_engine(sa_url(self.url, "asyncpg"),
                                  connect_args={"server_settings": {"statement_timeout": "300"}})
        try:
            async with eng.connect() as c:
                t0 = time.monotonic()
                try:
                    await c.execute(sa.text("SELECT pg_sleep(2)"))
                    raise AssertionError("pg_sleep(2) ran past statement_timeout=300")
                except sa.exc.DBAPIError as e:
                    took = time.monotonic() - t0
                    expect_state(e, "57014", "pg_sleep(2) under startup statement_timeout")
                check(took < 1.5, f"startup statement_timeout fired after {took:.2f}s")
                await c.rollback()
                eq((await c.execute(sa.text("SHOW statement_timeout"))).scalar_one(), "300ms",
                   "statement_timeout from server_settings")
        finally:
            await eng.dispose()
        async with self.engine.connect() as c:
            c = await c.execution_options(isolation_level="AUTOCOMMIT")
            await c.execute(sa.text("SET statement_timeout = 300"))
            t0 = time.monotonic()
            try:
                await c.execute(sa.text("SELECT pg_sleep(2)"))
                raise AssertionError("pg_sleep(2) ran past statement_timeout = 300")
            except sa.exc.DBAPIError as e:
                took = time.monotonic() - t0
                expect_state(e, "57014", "pg_sleep(2) under statement_timeout")
            check(took < 1.5, f"statement_timeout fired after {took:.2f}s")
            await c.execute(sa.text("RESET statement_timeout"))
            eq((await c.execute(sa.text("SHOW statement_timeout"))).scalar_one(), "0",
               "statement_timeout after RESET")
            eq((await c.execute(sa.text("SELECT pg_sleep(0.5)"))).scalar_one(), None,
               "pg_sleep(0.5) after RESET")

    async def close(self):
        await self.engine.dispose()


# --------------------------------------------------------------------------------------

DRIVERS = {
    "psycopg": Psycopg,
    "psycopg-async": PsycopgAsync,
    "psycopg-pipeline": PsycopgPipeline,
    "psycopg2": Psycopg2,
    "asyncpg": Asyncpg,
    "sqlalchemy-psycopg": SaPsycopg,
    "sqlalchemy-asyncpg": SaAsyncpg,
}


async def run(driver):
    for name in SCENARIOS:
        try:
            verdict = getattr(driver, name)()
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception as e:
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
            sys.exit(1)
        print(f"CELL {name} " + (f"n/a {verdict}" if verdict else "ok"), flush=True)
    done = driver.close()
    if inspect.isawaitable(done):
        await done
    print("matrix done", flush=True)


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in DRIVERS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    name, url, ids, batch = sys.argv[1:]
    ids = [int(x) for x in ids.split(",")]
    batch = [int(x) for x in batch.split(",")]
    check(len(ids) == 3 and len(batch) == 50, f"IDS {ids} / BATCH_IDS of {len(batch)}")
    # A hang fails the run (with every thread's stack) before the harness's 40 s.
    faulthandler.dump_traceback_later(38, exit=True)
    asyncio.run(run(DRIVERS[name](url, ids, batch)))


if __name__ == "__main__":
    main()
