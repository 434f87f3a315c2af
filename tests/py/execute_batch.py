"""psycopg2's execute_batch through the proxy (issue 19): it sends pages of
`INSERT …; INSERT …` as one simple query, rows on every shard, each page one implicit
transaction. Usage: execute_batch.py CONNINFO"""
import sys

import psycopg2
import psycopg2.errors
import psycopg2.extras

conn = psycopg2.connect(sys.argv[1])
conn.autocommit = True
cur = conn.cursor()
rows = [(i, "n%d" % i) for i in range(10, 1010)]
psycopg2.extras.execute_batch(cur, "INSERT INTO sc_users VALUES (%s, %s)", rows, page_size=100)
# A page whose last row fails: none of the page stays.
try:
    psycopg2.extras.execute_batch(
        cur, "INSERT INTO sc_users VALUES (%s, %s)", [(2000, "x"), (2001, "y"), (10, "dup")]
    )
    raise SystemExit("the duplicate was accepted")
except psycopg2.errors.UniqueViolation:
    pass
cur.execute("SELECT count(*) FROM sc_users WHERE id IN (2000, 2001)")
assert cur.fetchone()[0] == 0, "part of a failed page stayed"
# Inside a transaction (psycopg2's default): the pages join it, and ROLLBACK undoes them.
conn.autocommit = False
psycopg2.extras.execute_batch(cur, "INSERT INTO sc_users VALUES (%s, %s)", [(3000 + i, "t") for i in range(30)])
conn.rollback()
cur.execute("SELECT count(*) FROM sc_users WHERE id >= 3000")
assert cur.fetchone()[0] == 0, "a rolled-back page stayed"
conn.commit()
print("execute_batch checks passed")
