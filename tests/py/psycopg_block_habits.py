"""psycopg 3 habits inside transaction blocks, as its own suite exercises them, run directly
on Postgres and through the proxy (the same outcome expected).

usage: psycopg_block_habits.py DSN CASE
  pipeline-savepoint: `conn.transaction()` nested in pipeline mode after a read fetched at a
      Flush (test_transaction::test_explicit_rollback_discards_changes[pipeline=on]): the
      SAVEPOINT rides on the exchange the Flush left open; its ROLLBACK TO must find it.
  ddl-in-block: statements prepared in a block (prepare_threshold=0), then DROP/ALTER in the
      same block, after which psycopg prepares them again (test_prepared::test_change_type,
      test_change_type_savepoint, test_alter_table_clears_state): a new Parse meets the
      new schema, never a plan made before it.
"""
import sys
from operator import itemgetter

import psycopg
from psycopg import Rollback


def inserted(conn):
    return {v for (v,) in conn.execute("SELECT * FROM test_table").fetchall()}


def pipeline_savepoint(dsn):
    svc = psycopg.connect(dsn, autocommit=True)
    svc.execute("DROP TABLE IF EXISTS test_table")
    svc.execute("CREATE TABLE test_table (id text PRIMARY KEY)")
    conn = psycopg.connect(dsn)
    with conn.pipeline():
        for _ in range(3):
            with conn.transaction():
                conn.execute("INSERT INTO test_table VALUES (%s)", ("foo",))
                raise Rollback
            assert not inserted(conn)
            assert not inserted(svc)
        # An outer block unaffected by the inner one's rollback.
        with conn.transaction():
            conn.execute("INSERT INTO test_table VALUES (%s)", ("before",))
            with conn.transaction():
                conn.execute("INSERT INTO test_table VALUES (%s)", ("during",))
                raise Rollback
            conn.execute("INSERT INTO test_table VALUES (%s)", ("after",))
    conn.commit()
    assert inserted(conn) == {"before", "after"}, inserted(conn)
    assert inserted(svc) == {"before", "after"}, inserted(svc)
    conn.close()
    svc.execute("DROP TABLE test_table")
    svc.close()


def ddl_in_block(dsn):
    insert = "INSERT INTO preptable (bar) VALUES (%(enum_col)s::prepenum[])"
    # test_change_type: one block (psycopg's BEGIN before the first statement).
    conn = psycopg.connect(dsn)
    conn.prepare_threshold = 0
    conn.execute("CREATE TYPE prepenum AS ENUM ('foo', 'bar', 'baz')")
    conn.execute("CREATE TABLE preptable(id integer, bar prepenum[])")
    conn.cursor().execute(insert, {"enum_col": ["foo"]})
    conn.execute("DROP TABLE preptable")
    conn.execute("DROP TYPE prepenum")
    conn.execute("CREATE TYPE prepenum AS ENUM ('foo', 'bar', 'baz')")
    conn.execute("CREATE TABLE preptable(id integer, bar prepenum[])")
    conn.cursor().execute(insert, {"enum_col": ["foo"]})
    conn.rollback()
    # test_change_type_savepoint: the type and table made and rolled back three times.
    with conn.transaction():
        for _ in range(3):
            try:
                with conn.transaction():
                    conn.execute("CREATE TYPE prepenum AS ENUM ('foo', 'bar', 'baz')")
                    conn.execute("CREATE TABLE preptable(id integer, bar prepenum[])")
                    conn.cursor().execute(insert, {"enum_col": ["foo"]})
                    raise ZeroDivisionError()
            except ZeroDivisionError:
                pass
    # test_alter_table_clears_state.
    conn.execute("DROP TABLE IF EXISTS testalter")
    conn.execute("CREATE TABLE testalter (id serial primary key, data text)")
    conn.execute("INSERT INTO testalter (data) values (%s)", ["foo"])
    cur = conn.execute("SELECT * from testalter ORDER BY id")
    assert list(map(itemgetter(1), cur.fetchall())) == ["foo"]
    conn.execute("ALTER TABLE testalter ADD data2 text")
    conn.execute("INSERT INTO testalter (data) values (%s)", ["bar"])
    cur = conn.execute("SELECT * from testalter ORDER BY id")
    assert list(map(itemgetter(1), cur.fetchall())) == ["foo", "bar"]
    conn.rollback()
    conn.close()


CASES = {"pipeline-savepoint": pipeline_savepoint, "ddl-in-block": ddl_in_block}

if __name__ == "__main__":
    CASES[sys.argv[2]](sys.argv[1])
    print(f"psycopg {sys.argv[2]} checks passed")
