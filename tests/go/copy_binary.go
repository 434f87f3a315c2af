// Binary COPY into sharded tables (issue 19, tests/copy_binary.rs): pgx v4's CopyFrom (binary
// COPY FROM STDIN after a Prepare that describes the columns) of 100,000 rows through the
// proxy and into one Postgres for the time, a text key, and a CopyFrom in a transaction that
// rolls back. Built offline from Debian's packages in GOPATH mode.
//
// usage: go run copy_binary.go PROXY_URL REFERENCE_URL
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v4"
)

const n = 100000

var bg = context.Background()

func must(err error, what string) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAILED %s: %v\n", what, err)
		os.Exit(1)
	}
}

func expect(got, want int64, what string) {
	if got != want {
		fmt.Fprintf(os.Stderr, "FAILED %s: expected %d, got %d\n", what, want, got)
		os.Exit(1)
	}
}

func count(c *pgx.Conn, sql string) int64 {
	var k int64
	must(c.QueryRow(bg, sql).Scan(&k), sql)
	return k
}

func rows(lo, hi int64) pgx.CopyFromSource {
	return pgx.CopyFromSlice(int(hi-lo), func(i int) ([]interface{}, error) {
		id := lo + int64(i)
		var qty interface{}
		if id%11 != 0 {
			qty = int32(id % 1000)
		}
		at := time.Unix(1700000000+id, 0).UTC()
		return []interface{}{id, fmt.Sprintf("go-%d", id), qty, at}, nil
	})
}

// timedCopy creates cb_go on c and copies the n rows into it.
func timedCopy(c *pgx.Conn) time.Duration {
	_, err := c.Exec(bg, "CREATE TABLE cb_go (id bigint PRIMARY KEY, name text NOT NULL, qty int, at timestamptz)")
	must(err, "create cb_go")
	started := time.Now()
	k, err := c.CopyFrom(bg, pgx.Identifier{"cb_go"}, []string{"id", "name", "qty", "at"}, rows(1, n+1))
	took := time.Since(started)
	must(err, "CopyFrom cb_go")
	expect(k, n, "CopyFrom row count")
	return took
}

func main() {
	proxy, err := pgx.Connect(bg, os.Args[1])
	must(err, "connect to the proxy")
	direct, err := pgx.Connect(bg, os.Args[2])
	must(err, "connect to the reference")
	viaProxy := timedCopy(proxy)
	atOnce := timedCopy(direct)
	fmt.Printf("timing pgx CopyFrom %d rows: proxy=%.3fs direct=%.3fs\n", n, viaProxy.Seconds(), atOnce.Seconds())
	expect(count(proxy, "SELECT count(*) FROM cb_go"), n, "rows through the proxy")
	expect(count(proxy, "SELECT sum(qty) FROM cb_go"), count(direct, "SELECT sum(qty) FROM cb_go"), "qty sums")

	// A text key.
	_, err = proxy.Exec(bg, "CREATE TABLE cb_go_tag (tag text PRIMARY KEY, n int NOT NULL)")
	must(err, "create cb_go_tag")
	k, err := proxy.CopyFrom(bg, pgx.Identifier{"cb_go_tag"}, []string{"tag", "n"},
		pgx.CopyFromSlice(4000, func(i int) ([]interface{}, error) {
			return []interface{}{fmt.Sprintf("tag-%d", i), int32(i)}, nil
		}))
	must(err, "CopyFrom cb_go_tag")
	expect(k, 4000, "text-key row count")
	expect(count(proxy, "SELECT n FROM cb_go_tag WHERE tag = 'tag-1234'"), 1234, "a text-key row")

	// In a transaction that rolls back.
	tx, err := proxy.Begin(bg)
	must(err, "BEGIN")
	k, err = tx.CopyFrom(bg, pgx.Identifier{"cb_go"}, []string{"id", "name", "qty", "at"}, rows(n+1, n+1001))
	must(err, "CopyFrom in a transaction")
	expect(k, 1000, "row count in a transaction")
	var seen int64
	must(tx.QueryRow(bg, "SELECT count(*) FROM cb_go").Scan(&seen), "count in the transaction")
	expect(seen, n+1000, "rows seen in the transaction")
	must(tx.Rollback(bg), "ROLLBACK")
	expect(count(proxy, "SELECT count(*) FROM cb_go"), n, "rows after ROLLBACK")

	proxy.Close(bg)
	direct.Close(bg)
	fmt.Println("copy_binary checks passed")
}
