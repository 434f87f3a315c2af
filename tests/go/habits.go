// Go drivers through the proxy (issue 16), built offline from Debian's packages in GOPATH
// mode: pgx v4 (extended protocol, its statement cache, batches on one shard, a transaction
// across shards, COPY-free) and lib/pq (database/sql, prepared statements, a transaction
// with a rollback).
//
// usage: go run habits.go URL ID[,ID...]   (users rows named user-<id>)
package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v4"
	_ "github.com/lib/pq"
)

func must(err error, what string) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
		os.Exit(1)
	}
}

func check(ok bool, what string) {
	if !ok {
		fmt.Fprintf(os.Stderr, "check failed: %s\n", what)
		os.Exit(1)
	}
}

func main() {
	url := os.Args[1]
	var ids []int64
	for _, s := range strings.Split(os.Args[2], ",") {
		n, err := strconv.ParseInt(s, 10, 64)
		must(err, "ids")
		ids = append(ids, n)
	}
	ctx := context.Background()

	// pgx: its statement cache prepares each text once per connection.
	conn, err := pgx.Connect(ctx, url)
	must(err, "pgx connect")
	for round := 0; round < 5; round++ {
		for _, id := range ids {
			var name string
			must(conn.QueryRow(ctx, "SELECT name FROM users WHERE id = $1", id).Scan(&name), "pgx read")
			check(name == fmt.Sprintf("user-%d", id), "pgx name")
		}
	}
	var count int64
	must(conn.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&count), "pgx count")
	check(count == int64(len(ids)), "pgx count value")
	tx, err := conn.Begin(ctx)
	must(err, "pgx begin")
	for _, id := range ids {
		_, err := tx.Exec(ctx, "UPDATE users SET name = name WHERE id = $1", id)
		must(err, "pgx update in tx")
	}
	must(tx.Commit(ctx), "pgx commit")
	// A batch whose statements are on one shard.
	b := &pgx.Batch{}
	b.Queue("SELECT name FROM users WHERE id = $1", ids[0])
	b.Queue("UPDATE users SET name = name WHERE id = $1", ids[0])
	br := conn.SendBatch(ctx, b)
	var first string
	must(br.QueryRow().Scan(&first), "pgx batch read")
	_, err = br.Exec()
	must(err, "pgx batch exec")
	must(br.Close(), "pgx batch close")
	// A batch of different statements on every shard (issue 19): one transaction across them.
	b = &pgx.Batch{}
	b.Queue("UPDATE users SET name = 'batched' WHERE id = $1", ids[0])
	b.Queue("SELECT name FROM users WHERE id = $1", ids[1])
	b.Queue("UPDATE users SET name = 'batched' WHERE id = $1", ids[len(ids)-1])
	br = conn.SendBatch(ctx, b)
	_, err = br.Exec()
	must(err, "pgx mixed batch update")
	must(br.QueryRow().Scan(&first), "pgx mixed batch read")
	check(first == fmt.Sprintf("user-%d", ids[1]), "pgx mixed batch read value")
	_, err = br.Exec()
	must(err, "pgx mixed batch update 2")
	must(br.Close(), "pgx mixed batch close")
	must(conn.QueryRow(ctx, "SELECT count(*) FROM users WHERE name = 'batched'").Scan(&count), "pgx batched count")
	check(count == 2, "pgx mixed batch applied on both shards")
	// Its failing statement on another shard undoes the others.
	b = &pgx.Batch{}
	b.Queue("UPDATE users SET name = 'lost' WHERE id = $1", ids[0])
	b.Queue("SELECT 1/0 FROM users WHERE id = $1", ids[1])
	br = conn.SendBatch(ctx, b)
	_, err = br.Exec()
	must(err, "pgx failing batch first update")
	_, err = br.Exec()
	check(err != nil, "pgx failing batch reports the division by zero")
	br.Close()
	must(conn.QueryRow(ctx, "SELECT count(*) FROM users WHERE name = 'lost'").Scan(&count), "pgx lost count")
	check(count == 0, "pgx failed batch left nothing")
	for _, id := range ids {
		_, err = conn.Exec(ctx, "UPDATE users SET name = $2 WHERE id = $1", id, fmt.Sprintf("user-%d", id))
		must(err, "pgx restore names")
	}
	must(conn.Close(ctx), "pgx close")

	// lib/pq through database/sql.
	db, err := sql.Open("postgres", url+"?sslmode=disable")
	must(err, "pq open")
	stmt, err := db.Prepare("SELECT name FROM users WHERE id = $1")
	must(err, "pq prepare")
	for _, id := range ids {
		var name string
		must(stmt.QueryRow(id).Scan(&name), "pq read")
		check(name == fmt.Sprintf("user-%d", id), "pq name")
	}
	sqlTx, err := db.Begin()
	must(err, "pq begin")
	_, err = sqlTx.Exec("UPDATE users SET name = 'pq' WHERE id = $1", ids[0])
	must(err, "pq update")
	_, err = sqlTx.Exec("UPDATE users SET name = 'pq' WHERE id = $1", ids[len(ids)-1])
	must(err, "pq update 2")
	must(sqlTx.Rollback(), "pq rollback")
	var n int64
	must(db.QueryRow("SELECT count(*) FROM users WHERE name = 'pq'").Scan(&n), "pq count")
	check(n == 0, "pq rolled back")
	must(db.Close(), "pq close")
	fmt.Println("go checks passed")
}
