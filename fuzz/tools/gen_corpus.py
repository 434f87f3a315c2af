#!/usr/bin/env python3
"""Regenerates the seed corpus of the fuzz targets (issue 17) under fuzz/corpus/.

    python3 fuzz/tools/gen_corpus.py        # from the repository root (or anywhere)

- router/: the SQL string literals of the tests (tests/*.rs, tests/common/*.rs and the
  #[cfg(test)] modules under src/), format placeholders filled in; statements with $n
  parameters also get a copy with Bind parameters appended (input format: `sql \\0 params`,
  each parameter `[kind, len, bytes]`, see tests/fuzz_targets/mod.rs).
- frames/: client message streams as drivers send them (simple query, extended protocol
  pipelines like psycopg/asyncpg/JDBC/sqlx, COPY FROM STDIN data, malformed frames),
  built by hand from the protocol's message formats, each behind the 2-byte header
  `[flags, seed]` the frames target reads.
- startup/: connection openings: StartupMessage with the parameters drivers send,
  SSLRequest/GSSENCRequest first, CancelRequest, protocol 3.2 with `_pq_.` options, the
  `options` and `client_encoding` cases of tests/driver_habits.rs, then SCRAM or md5
  password messages, behind the 1-byte seed the startup target reads.

Files are named by the SHA-1 of their content, so re-running only adds what changed.
The script removes nothing; delete a directory first to regenerate it from scratch.
"""

import base64
import hashlib
import os
import re
import struct
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "fuzz", "corpus")

SQL_START = re.compile(
    r"^\s*(\(|/\*|--\s)?\s*(SELECT|INSERT|UPDATE|DELETE|WITH|BEGIN|COMMIT|ROLLBACK|END|ABORT|"
    r"START|SET|SHOW|RESET|CREATE|DROP|ALTER|COPY|EXPLAIN|PREPARE|EXECUTE|DEALLOCATE|DISCARD|"
    r"DECLARE|FETCH|MOVE|CLOSE|SAVEPOINT|RELEASE|TRUNCATE|LOCK|VALUES|TABLE|LISTEN|UNLISTEN|"
    r"NOTIFY|VACUUM|ANALYZE|GRANT|REVOKE|COMMENT|CALL|DO|MERGE|REFRESH|REINDEX|CLUSTER|"
    r"CHECKPOINT|LOAD|SECURITY|IMPORT|REASSIGN)\b",
    re.IGNORECASE,
)


def write(target, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ------------------------------------------------------------------------------------------
# SQL from the tests
# ------------------------------------------------------------------------------------------


def rust_strings(text):
    """String literals of Rust source: "..." (with escapes and line continuations) and
    raw strings r"..." / r#"..."#."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c == "r" and i + 1 < n and text[i + 1] in '#"' and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            j = i + 1
            hashes = 0
            while j < n and text[j] == "#":
                hashes += 1
                j += 1
            if j < n and text[j] == '"':
                end = text.find('"' + "#" * hashes, j + 1)
                if end < 0:
                    break
                out.append(text[j + 1 : end])
                i = end + 1 + hashes
                continue
        if c == "'" :
            # char literal or lifetime: skip 'x' / '\x' forms
            m = re.match(r"'(\\.|[^\\'])'", text[i:])
            if m:
                i += m.end()
                continue
        if c == '"':
            j = i + 1
            buf = []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    e = text[j + 1]
                    if e == "\n":
                        j += 2
                        while j < n and text[j] in " \t\r\n":
                            j += 1
                        continue
                    buf.append({"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'"}.get(e, "\\" + e))
                    j += 2
                    continue
                buf.append(text[j])
                j += 1
            out.append("".join(buf))
            i = j + 1
            continue
        i += 1
    return out


def fill_placeholders(s):
    s = s.replace("{{", "\x01").replace("}}", "\x02")
    counter = [0]

    def sub(m):
        counter[0] += 1
        name = m.group(1)
        if any(k in name for k in ("table", "tbl", "t}")):
            return "users"
        return str([42, 7, 1001, 3][counter[0] % 4])

    s = re.sub(r"\{([A-Za-z0-9_.:?#]*)\}", sub, s)
    return s.replace("\x01", "{").replace("\x02", "}")


def params_for(sql):
    """Bind parameters for the $n of `sql`: text integers, a NULL, a binary int8."""
    nums = [int(m) for m in re.findall(r"\$(\d+)", sql)]
    if not nums:
        return None
    n = min(max(nums), 20)
    out = bytearray()
    for i in range(n):
        if i == 1:
            v = b"2025-06-01 00:00:00+00"
            out += bytes([0, len(v)]) + v
        elif i == 2:
            out += bytes([2, 0])  # NULL
        elif i == 3:
            v = struct.pack(">q", 4242)
            out += bytes([1, len(v)]) + v
        else:
            v = str(17 + i).encode()
            out += bytes([0, len(v)]) + v
    return bytes(out)


def sql_corpus():
    files = []
    for d in ("tests", os.path.join("tests", "common")):
        p = os.path.join(ROOT, d)
        files += [os.path.join(p, f) for f in sorted(os.listdir(p)) if f.endswith(".rs")]
    for dp, _, fs in os.walk(os.path.join(ROOT, "src")):
        for f in sorted(fs):
            if f.endswith(".rs"):
                files.append(os.path.join(dp, f))
    seen = set()
    for path in files:
        if path.endswith("fuzz_corpus.rs"):
            continue
        text = open(path, encoding="utf-8", errors="replace").read()
        if "/src/" in path:
            # Only the unit tests of src files.
            at = text.find("#[cfg(test)]")
            if at < 0:
                continue
            text = text[at:]
        for s in rust_strings(text):
            if not SQL_START.match(s) or len(s) > 4000:
                continue
            s = fill_placeholders(s)
            if s in seen:
                continue
            seen.add(s)
            b = s.encode()
            if b"\0" in b:
                continue
            write("router", b)
            ps = params_for(s)
            if ps is not None:
                write("router", b + b"\0" + ps)
    # A few COPY statements with their data as "parameters" (the router target feeds them
    # to the row splitter).
    copies = [
        ("COPY users (id, name) FROM STDIN", b"1\talice\n2\tbob\n\\N\tnull\n\\.\n"),
        ("COPY users (name, id) FROM STDIN WITH (FORMAT csv, HEADER true)", b'name,id\n"a,b",1\n"q""uote",2\n'),
        ("COPY customers (country, name) FROM STDIN (FORMAT csv, DELIMITER '|', QUOTE '''')", b"DE|x\r\nUS|'y|z'\r\n"),
        ("COPY countries FROM STDIN", b"DE\tGermany\n"),
    ]
    for sql, data in copies:
        ps = bytearray()
        for i in range(0, len(data), 7):
            chunk = data[i : i + 7]
            ps += bytes([0, len(chunk)]) + chunk
        write("router", sql.encode() + b"\0" + bytes(ps))
    return seen


# ------------------------------------------------------------------------------------------
# Protocol messages
# ------------------------------------------------------------------------------------------


def cstr(s):
    return (s.encode() if isinstance(s, str) else s) + b"\0"


def msg(tag, body):
    return tag + struct.pack(">i", len(body) + 4) + body


def Q(sql):
    return msg(b"Q", cstr(sql))


def P(name, sql, types=()):
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack(">h", len(types)) + b"".join(struct.pack(">I", t) for t in types))


def B(portal, stmt, params=(), formats=(), results=()):
    body = cstr(portal) + cstr(stmt) + struct.pack(">h", len(formats))
    body += b"".join(struct.pack(">h", f) for f in formats)
    body += struct.pack(">h", len(params))
    for p in params:
        if p is None:
            body += struct.pack(">i", -1)
        else:
            p = p.encode() if isinstance(p, str) else p
            body += struct.pack(">i", len(p)) + p
    body += struct.pack(">h", len(results)) + b"".join(struct.pack(">h", r) for r in results)
    return msg(b"B", body)


def D(kind, name):
    return msg(b"D", kind + cstr(name))


def C(kind, name):
    return msg(b"C", kind + cstr(name))


def E(portal, max_rows=0):
    return msg(b"E", cstr(portal) + struct.pack(">i", max_rows))


S = msg(b"S", b"")
H = msg(b"H", b"")
X = msg(b"X", b"")


def copy_data(b):
    return msg(b"d", b)


COPY_DONE = msg(b"c", b"")


def startup_message(params, version=196608):
    body = struct.pack(">i", version) + b"".join(cstr(k) + cstr(v) for k, v in params) + b"\0"
    return struct.pack(">i", len(body) + 4) + body


SSL_REQUEST = struct.pack(">ii", 8, 80877103)
GSSENC_REQUEST = struct.pack(">ii", 8, 80877104)


def cancel_request(pid, secret):
    return struct.pack(">iiii", 16, 80877102, pid, secret)


def frames_corpus(sqls):
    sqls = sorted(sqls)[:60]
    streams = []
    streams.append(Q("SELECT 1") + X)
    streams.append(Q("SELECT * FROM users WHERE id = 42; SELECT 2") + Q("") + X)
    # psycopg / tokio-postgres: unnamed statement, Parse/Bind/Describe/Execute/Sync.
    streams.append(P("", "SELECT name FROM users WHERE id = $1", [20]) + B("", "", ["42"]) + D(b"P", "") + E("") + S)
    # asyncpg: named statement, Describe + Flush before Bind, binary params and results.
    streams.append(
        P("__asyncpg_stmt_1__", "SELECT * FROM users WHERE id = $1", [0]) + D(b"S", "__asyncpg_stmt_1__") + H
        + B("", "__asyncpg_stmt_1__", [struct.pack(">q", 7)], [1], [1]) + E("") + S
    )
    # JDBC: BEGIN pipelined with the first statement.
    streams.append(P("", "BEGIN") + B("", "") + E("") + P("", "INSERT INTO users (id, name) VALUES ($1, $2)") + B("", "", ["1", "a"]) + E("") + S)
    # sqlx: close the portal before Sync; merged multi-shard query.
    streams.append(P("sqlx_s_1", "SELECT id FROM users ORDER BY id LIMIT $1") + B("", "sqlx_s_1", ["5"], [0]) + E("", 0) + C(b"P", "") + S + C(b"S", "sqlx_s_1") + S)
    # NULL and empty parameters, several format codes, row limits.
    streams.append(B("p1", "s1", [None, "", "x"], [0, 1, 0], [0, 1]) + E("p1", 10) + E("p1", 0) + S)
    streams.append(B("", "", [None] * 17, [1], []) + S)
    # COPY FROM STDIN data.
    streams.append(Q("COPY users (id, name) FROM STDIN") + copy_data(b"1\talice\n2\tb") + copy_data(b"ob\n\\N\tn\n") + copy_data(b"\\.\n") + COPY_DONE + S)
    streams.append(copy_data(b'1,"a\nb"\r\n2,c\r\n') + copy_data(b'"3",""\r\n') + COPY_DONE)
    streams.append(copy_data(b"k\tv\n") + msg(b"f", cstr("client gave up")))
    # Password messages (SASLInitialResponse, SCRAM final, md5).
    cf = b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"
    streams.append(msg(b"p", cstr("SCRAM-SHA-256") + struct.pack(">i", len(cf)) + cf) + msg(b"p", b"c=biws,r=@NONCE@,p=" + base64.b64encode(b"\x01" * 32)))
    streams.append(msg(b"p", cstr("md5" + "0" * 32)))
    # Malformed: bad lengths, truncation, negative counts.
    streams.append(b"Q\0\0\0\x03")
    streams.append(b"Q\x7f\xff\xff\xff")
    streams.append(Q("SELECT 1")[:-3])
    streams.append(msg(b"P", cstr("") + cstr("x") + struct.pack(">h", -1)))
    streams.append(msg(b"B", cstr("") + cstr("") + struct.pack(">hh", 0, 1) + struct.pack(">i", -2) + struct.pack(">h", 0)))
    streams.append(msg(b"B", cstr("") + cstr("") + struct.pack(">hhh", 2, 0, 1) + struct.pack(">h", 1) + struct.pack(">i", 1) + b"x" + struct.pack(">h", 0)))
    streams.append(msg(b"D", b"X" + cstr("n")) + msg(b"C", b"S") + msg(b"E", cstr("p")))
    # Every SQL text of the tests in a Query or a Parse.
    for i, s in enumerate(sqls):
        streams.append(Q(s) if i % 2 == 0 else P("s%d" % i, s) + B("", "s%d" % i, ["1"] * min(s.count("$"), 5)) + E("") + S)

    headers = [(0x07, 0), (0x07, 1), (0x07, 0x5A), (0x16, 0x33), (0x37, 0x99), (0x47, 0x11), (0x87, 0x42), (0xC7, 0x0D)]
    for k, st in enumerate(streams):
        flags, seed = headers[k % len(headers)]
        write("frames", bytes([flags, seed]) + st)
        if k < 20:
            write("frames", bytes([0x07, 0]) + st)
    # A connection from its first byte: startup packet (flag 0x08), then messages.
    write("frames", bytes([0x0F, 0x21]) + startup_message([("user", "app"), ("database", "app")]) + Q("SELECT 1") + X)
    write("frames", bytes([0x3F, 0x05]) + startup_message([("user", "app")]) + P("", "SELECT $1") + B("", "", ["1"]) + E("") + S)


def startup_corpus():
    app = [("user", "app"), ("database", "app")]
    scram_first = b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"
    sasl = msg(b"p", cstr("SCRAM-SHA-256") + struct.pack(">i", len(scram_first)) + scram_first)
    scram_final = msg(b"p", b"c=biws,r=@NONCE@,p=" + base64.b64encode(b"\x07" * 32))
    scram = sasl + scram_final
    md5 = msg(b"p", cstr("md5" + "1" * 32))
    cases = [
        startup_message(app) + scram,
        startup_message(app + [("application_name", "psql"), ("client_encoding", "UTF8")]) + scram,
        startup_message(app + [("client_encoding", "'utf-8'"), ("options", "-c statement_timeout=300")]) + scram,
        startup_message(app + [("options", "-c statement_timeout=300  --search-path=a\\ b -cwork_mem=8MB")]) + scram,
        startup_message(app + [("options", "-B 100")]),
        startup_message(app + [("options", "-c")]),
        startup_message(app + [("options", "-c client_encoding=euc_jp")]),
        startup_message([("user", "app"), ("client_encoding", "LATIN1")]),
        startup_message([("user", "app"), ("client_encoding", "sql_ascii"), ("DateStyle", "ISO, MDY"), ("extra_float_digits", "3")]) + scram,
        startup_message([("user", "app"), ("replication", "database")]),
        startup_message([("user", "app"), ("replication", "off")]) + scram,
        startup_message([("database", "app")]),
        startup_message(app + [("_pq_.compression", "on"), ("_pq_.x", "1")], version=(3 << 16) | 2) + scram,
        startup_message(app, version=(2 << 16)),
        startup_message(app, version=(3 << 16) | 0xFFFF),
        SSL_REQUEST + startup_message(app) + scram,
        GSSENC_REQUEST + SSL_REQUEST + startup_message(app) + scram,
        cancel_request(1234, 5678),
        cancel_request(-1, 0)[:12],
        startup_message(app) + md5,
        startup_message(app) + msg(b"p", cstr("SCRAM-SHA-256") + struct.pack(">i", -1)),
        startup_message(app) + msg(b"p", cstr("PLAIN") + struct.pack(">i", 3) + b"abc"),
        startup_message(app) + msg(b"p", cstr("SCRAM-SHA-256") + struct.pack(">i", 8) + b"p=tls,,r"),
        startup_message(app) + sasl + msg(b"p", b"c=biws,r=@NONCE@,p=!!!"),
        startup_message(app) + sasl + msg(b"p", b"c=biws,r=wrong,p=" + base64.b64encode(b"x" * 32)),
        startup_message(app) + msg(b"Q", cstr("SELECT 1")),
        struct.pack(">i", 7) + b"\0\0\0",
        struct.pack(">i", 10001),
        struct.pack(">ii", 8, 196608),
        startup_message(app)[:-1] + b"x",
    ]
    seeds = [0, 0x80, 0x02, 0x33, 0x81]
    for k, c in enumerate(cases):
        write("startup", bytes([seeds[k % len(seeds)] & 0xFE]) + c)
        if c.endswith(scram):
            write("startup", bytes([0x01]) + c[: len(c) - len(scram)] + md5)


def main():
    sqls = sql_corpus()
    frames_corpus(sqls)
    startup_corpus()
    for t in sorted(os.listdir(OUT)):
        d = os.path.join(OUT, t)
        fs = os.listdir(d)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in fs)
        print("%s: %d files, %d bytes" % (t, len(fs), size))


if __name__ == "__main__":
    sys.exit(main())
