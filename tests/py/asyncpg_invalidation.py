"""asyncpg's prepared statements after the result of their query changed (as its own suite's
test_cache_invalidation / test_prepare do): asyncpg knows Postgres's "cached plan must not
change result type" by its routine field (R = RevalidateCachedQuery) and then, outside a
transaction, prepares again without a word; inside one, and for a statement prepared
explicitly, it raises InvalidCachedStatementError. Run directly on Postgres and through the
proxy: the same outcome.

usage: asyncpg_invalidation.py DSN
"""
import asyncio
import sys

import asyncpg


async def main():
    dsn = sys.argv[1]
    con = await asyncpg.connect(dsn)
    other = await asyncpg.connect(dsn)
    await con.execute("CREATE TABLE inval1 (a int, b int)")
    await con.execute("INSERT INTO inval1 VALUES (1, 2)")
    # Its statement cache, the table altered by the same connection: silent.
    assert await con.fetchrow("SELECT * FROM inval1") == (1, 2)
    await con.execute("ALTER TABLE inval1 ALTER COLUMN b SET DATA TYPE text")
    got = await con.fetchrow("SELECT * FROM inval1")
    assert tuple(got) == (1, "2"), got
    # Altered by another connection: silent too.
    await other.execute("ALTER TABLE inval1 ADD COLUMN c int DEFAULT 3")
    got = await con.fetchrow("SELECT * FROM inval1")
    assert tuple(got) == (1, "2", 3), got
    # Inside a transaction: the error, by its class; after it, the statement works again.
    await other.execute("ALTER TABLE inval1 ALTER COLUMN c SET DATA TYPE text")
    try:
        async with con.transaction():
            await con.fetchrow("SELECT * FROM inval1")
        raise AssertionError("no error inside the transaction")
    except asyncpg.InvalidCachedStatementError:
        pass
    got = await con.fetchrow("SELECT * FROM inval1")
    assert tuple(got) == (1, "2", "3"), got
    # A statement prepared explicitly: the error, by its class.
    stmt = await con.prepare("SELECT a, b FROM inval1")
    assert tuple(await stmt.fetchrow()) == (1, "2")
    await other.execute("ALTER TABLE inval1 ALTER COLUMN b SET DATA TYPE int USING b::int")
    try:
        await stmt.fetchrow()
        raise AssertionError("no error for the explicit statement")
    except asyncpg.InvalidCachedStatementError as e:
        assert "cached statement plan is invalid" in str(e), e
    await con.execute("DROP TABLE inval1")
    await other.close()
    await con.close()
    print("asyncpg invalidation checks passed")


asyncio.run(main())
