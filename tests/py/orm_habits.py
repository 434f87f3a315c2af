"""psycopg2 and SQLAlchemy (ORM over psycopg 3, psycopg2 and asyncpg) through the proxy
(issue 16): CRUD by key on every shard, transactions with commit, rollback and an error,
nested savepoints, merged reads, and a prepared-statement reuse loop.

usage: orm_habits.py HOST PORT ID[,ID...]   (users(id, name) rows named user-<id>)
"""
import asyncio
import sys

import psycopg2
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

host, port, id_list = sys.argv[1], sys.argv[2], sys.argv[3]
ids = [int(x) for x in id_list.split(",")]
auth = f"app:app-secret@{host}:{port}/app"


def check(ok, what):
    if not ok:
        raise AssertionError(what)


# psycopg2 (libpq, simple protocol with client-side parameters)
conn = psycopg2.connect(f"postgresql://{auth}")
cur = conn.cursor()
for i in ids:
    cur.execute("SELECT name FROM users WHERE id = %s", (i,))
    check(cur.fetchone() == (f"user-{i}",), f"psycopg2 read {i}")
cur.execute("UPDATE users SET name = 'p2' WHERE id = %s", (ids[0],))
cur.execute("SAVEPOINT a")
cur.execute("UPDATE users SET name = 'p2' WHERE id = %s", (ids[1],))
try:
    cur.execute("SELECT 1/0")
except psycopg2.errors.DivisionByZero:
    cur.execute("ROLLBACK TO SAVEPOINT a")
conn.rollback()
cur.execute("SELECT count(*) FROM users WHERE name = 'p2'")
check(cur.fetchone() == (0,), "psycopg2 rollback")
conn.close()


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    name: Mapped[str]


for url in (f"postgresql+psycopg://{auth}", f"postgresql+psycopg2://{auth}"):
    engine = sa.create_engine(url, pool_size=3)
    with Session(engine) as s:
        for i in ids:
            check(s.get(User, i).name == f"user-{i}", f"{url} get {i}")
        # Nested transaction (SAVEPOINT) that fails, the outer one commits on every shard.
        s.get(User, ids[0]).name = "orm"
        try:
            with s.begin_nested():
                s.get(User, ids[1]).name = "doomed"
                s.flush()
                s.execute(sa.text("SELECT 1/0"))
        except sa.exc.DBAPIError:
            pass
        s.get(User, ids[2]).name = "orm"
        s.commit()
    with Session(engine) as s:
        names = {u.id: u.name for u in s.scalars(sa.select(User).order_by(User.id))}
        check(names[ids[0]] == "orm" and names[ids[2]] == "orm", f"{url} committed {names}")
        check(names[ids[1]] == f"user-{ids[1]}", f"{url} savepoint rolled back {names}")
        check(s.scalar(sa.select(sa.func.count()).select_from(User)) == len(ids), "count")
        for i in (ids[0], ids[2]):
            s.get(User, i).name = f"user-{i}"
        s.commit()
    # The same statement 100 times (the dialects prepare it after a few executions).
    with engine.connect() as c:
        for n in range(100):
            i = ids[n % len(ids)]
            got = c.execute(sa.text("SELECT name FROM users WHERE id = :i"), {"i": i}).scalar()
            check(got == f"user-{i}", f"{url} reuse {i}")
    engine.dispose()


async def with_asyncpg():
    engine = create_async_engine(f"postgresql+asyncpg://{auth}", pool_size=3)
    async with engine.begin() as c:
        for i in ids:
            got = (await c.execute(sa.text("SELECT name FROM users WHERE id = :i"), {"i": i})).scalar()
            check(got == f"user-{i}", f"asyncpg dialect {i}")
        await c.execute(sa.text("UPDATE users SET name = name WHERE id = :i"), {"i": ids[0]})
    await engine.dispose()


asyncio.run(with_asyncpg())
print("orm checks passed")
