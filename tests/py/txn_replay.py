"""Runs a script file statement by statement with psycopg 3 (extended protocol, autocommit
on, so the script's own BEGIN/COMMIT/SAVEPOINT are sent as statements) and prints, for each
statement, its command tag and rows or its SQLSTATE — one line each, comparable between a
proxy and a reference Postgres.

usage: txn_replay.py CONNINFO FILE
Lines starting with a backslash are psql meta-commands: `\\echo X` prints X, others are skipped.
"""
import sys

import psycopg


def main():
    conninfo, path = sys.argv[1], sys.argv[2]
    conn = psycopg.connect(conninfo, autocommit=True)
    cur = conn.cursor()
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line:
            continue
        if line.startswith("\\"):
            if line.startswith("\\echo "):
                print(line[len("\\echo "):])
            continue
        stmt = line.rstrip(";")
        try:
            cur.execute(stmt)
            rows = cur.fetchall() if cur.description else None
            print(f"{stmt} -> {cur.statusmessage} {rows if rows is not None else ''}".rstrip())
        except psycopg.Error as e:
            print(f"{stmt} -> ERROR {e.sqlstate}")
    conn.close()


if __name__ == "__main__":
    main()
