"""psycopg 3 habits inside transaction blocks, as its own suite exercises them, run directly
on Postgres and through the proxy (the same outcome expected).

usage: psycopg_block_habits.py DSN CASE
  pipeline-savepoint: `conn.transaction()` nested in pipeline mode after a read fetched at a
      Flush (test_transaction::test_explicit_rollback_discards_changes[pipeline=on]): the
      SAVEPOINT rides on the exchange the Flush left open; its ROLLBACK TO must find it.
"""
import sys

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


CASES = {"pipeline-savepoint": pipeline_savepoint}

if __name__ == "__main__":
    CASES[sys.argv[2]](sys.argv[1])
    print(f"psycopg {sys.argv[2]} checks passed")
