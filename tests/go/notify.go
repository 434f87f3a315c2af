// LISTEN/NOTIFY through the proxy (issue 19) with Go drivers, built offline from Debian's
// packages in GOPATH mode: lib/pq's pq.Listener (its own connection, LISTEN, Ping, Unlisten)
// and pgx v4's WaitForNotification; notifications sent by database/sql (pg_notify with bound
// parameters, NOTIFY inside a transaction: at COMMIT only).
//
// usage: go run notify.go URL
package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v4"
	"github.com/lib/pq"
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
	ctx := context.Background()
	db, err := sql.Open("postgres", url)
	must(err, "open")
	defer db.Close()

	// lib/pq
	l := pq.NewListener(url, 10*time.Millisecond, time.Second, func(ev pq.ListenerEventType, err error) {
		if err != nil {
			fmt.Fprintf(os.Stderr, "listener event %v: %v\n", ev, err)
		}
	})
	must(l.Listen("go_chan"), "Listen")
	must(l.Ping(), "Ping")
	wait := func(want string) {
		select {
		case n := <-l.Notify:
			check(n != nil && n.Channel == "go_chan" && n.Extra == want && n.BePid != 0,
				fmt.Sprintf("pq notification %+v, want %q", n, want))
		case <-time.After(5 * time.Second):
			check(false, "no pq notification "+want)
		}
	}
	_, err = db.Exec("NOTIFY go_chan, 'pq'")
	must(err, "NOTIFY")
	wait("pq")
	_, err = db.Exec("SELECT pg_notify($1, $2)", "go_chan", "bound")
	must(err, "pg_notify")
	wait("bound")
	tx, err := db.Begin()
	must(err, "Begin")
	_, err = tx.Exec("NOTIFY go_chan, 'in-txn'")
	must(err, "NOTIFY in txn")
	select {
	case n := <-l.Notify:
		check(false, fmt.Sprintf("before COMMIT: %+v", n))
	case <-time.After(300 * time.Millisecond):
	}
	must(tx.Commit(), "Commit")
	wait("in-txn")
	must(l.Unlisten("go_chan"), "Unlisten")
	_, err = db.Exec("NOTIFY go_chan, 'unheard'")
	must(err, "NOTIFY after Unlisten")
	select {
	case n := <-l.Notify:
		check(false, fmt.Sprintf("after Unlisten: %+v", n))
	case <-time.After(300 * time.Millisecond):
	}
	must(l.Close(), "Close")

	// pgx v4
	conn, err := pgx.Connect(ctx, url)
	must(err, "pgx connect")
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "listen pgx_chan")
	must(err, "pgx listen")
	_, err = db.Exec("SELECT pg_notify('pgx_chan', $1)", "v1")
	must(err, "pg_notify for pgx")
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	n, err := conn.WaitForNotification(wctx)
	cancel()
	must(err, "WaitForNotification")
	check(n.Channel == "pgx_chan" && n.Payload == "v1", fmt.Sprintf("pgx notification %+v", n))
	// The connection stays usable between notifications.
	var one int
	must(conn.QueryRow(ctx, "SELECT 1").Scan(&one), "pgx query")
	check(one == 1, "pgx query")
	fmt.Println("notify checks passed")
}
