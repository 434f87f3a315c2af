// Driver matrix (tests/driver_matrix.rs): the Go drivers through the proxy, the 12 scenarios
// of the matrix contract with each driver's ordinary API. Built offline from Debian's packages
// in GOPATH mode.
//
//	pgx: pgx v4 (its statement cache, conn.Prepare, pgx.Batch/SendBatch, PgConn().CopyFrom in
//	     text format, pgxpool with 20 connections, context cancellation, SET statement_timeout)
//	pq:  lib/pq through database/sql (db.Prepare, a prepared INSERT in a Tx as the batch,
//	     pq.CopyIn in a Tx, db.Conn per worker, context cancellation, *pq.Error codes)
//
// usage: go run matrix.go pgx|pq URL IDS BATCH_IDS
package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgconn"
	"github.com/jackc/pgx/v4"
	"github.com/jackc/pgx/v4/pgxpool"
	"github.com/lib/pq"
)

var (
	url      string
	ids      []int64
	batchIDs []int64
	bg       = context.Background()
)

func must(err error, what string) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAILED %s: %v\n", what, err)
		os.Exit(1)
	}
}

func failf(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAILED "+format+"\n", args...)
	os.Exit(1)
}

func expect(got, want interface{}, what string) {
	if !reflect.DeepEqual(got, want) {
		failf("%s: expected %v, got %v", what, want, got)
	}
}

func cell(name string) {
	fmt.Printf("CELL %s ok\n", name)
}

func parseIDs(s string) []int64 {
	var out []int64
	for _, part := range strings.Split(s, ",") {
		n, err := strconv.ParseInt(part, 10, 64)
		must(err, "id list "+s)
		out = append(out, n)
	}
	return out
}

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: go run matrix.go pgx|pq URL IDS BATCH_IDS")
		os.Exit(2)
	}
	url = os.Args[2]
	ids = parseIDs(os.Args[3])
	batchIDs = parseIDs(os.Args[4])
	if len(ids) != 3 {
		failf("IDS: expected 3 ids, got %d", len(ids))
	}
	if len(batchIDs) != 50 {
		failf("BATCH_IDS: expected 50 ids, got %d", len(batchIDs))
	}
	switch os.Args[1] {
	case "pgx":
		runPgx()
	case "pq":
		runPq()
	default:
		failf("unknown driver %q", os.Args[1])
	}
	fmt.Println("matrix done")
}

// pgState is the SQLSTATE of a server error pgx returned, "" for any other error.
func pgState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// ---------------------------------------------------------------------------------------
// pgx v4

func runPgx() {
	conn, err := pgx.Connect(bg, url)
	must(err, "pgx connect")
	defer conn.Close(bg)

	// connect
	var one int
	must(conn.QueryRow(bg, "SELECT 1").Scan(&one), "SELECT 1")
	expect(one, 1, "SELECT 1")
	if conn.PgConn().ParameterStatus("server_version") == "" {
		failf("server_version parameter status is empty")
	}
	var version string
	must(conn.QueryRow(bg, "SHOW server_version").Scan(&version), "SHOW server_version")
	if version == "" {
		failf("SHOW server_version is empty")
	}
	cell("connect")

	// ddl
	_, err = conn.Exec(bg, "DROP TABLE IF EXISTS items")
	must(err, "DROP TABLE")
	_, err = conn.Exec(bg, "CREATE TABLE items (id bigint PRIMARY KEY, grp int NOT NULL, v text)")
	must(err, "CREATE TABLE")
	expect(pgxCount(conn, "SELECT count(*) FROM items"), int64(0), "count after CREATE")
	cell("ddl")

	// crud
	for _, id := range ids {
		ct, err := conn.Exec(bg, "INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)", id, 1, fmt.Sprintf("v%d", id))
		must(err, fmt.Sprintf("INSERT %d", id))
		expect(ct.RowsAffected(), int64(1), fmt.Sprintf("INSERT %d row count", id))
		expect(pgxV(conn, id), fmt.Sprintf("v%d", id), fmt.Sprintf("v of %d", id))
		ct, err = conn.Exec(bg, "UPDATE items SET v = $1 WHERE id = $2", fmt.Sprintf("u%d", id), id)
		must(err, fmt.Sprintf("UPDATE %d", id))
		expect(ct.RowsAffected(), int64(1), fmt.Sprintf("UPDATE %d row count", id))
		expect(pgxV(conn, id), fmt.Sprintf("u%d", id), fmt.Sprintf("v of %d after UPDATE", id))
	}
	last := ids[2]
	ct, err := conn.Exec(bg, "DELETE FROM items WHERE id = $1", last)
	must(err, "DELETE")
	expect(ct.RowsAffected(), int64(1), "DELETE row count")
	var gone string
	err = conn.QueryRow(bg, "SELECT v FROM items WHERE id = $1", last).Scan(&gone)
	if !errors.Is(err, pgx.ErrNoRows) {
		failf("SELECT of deleted %d: expected no rows, got %v (%q)", last, err, gone)
	}
	ct, err = conn.Exec(bg, "INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)", last, 1, fmt.Sprintf("u%d", last))
	must(err, "re-INSERT")
	expect(ct.RowsAffected(), int64(1), "re-INSERT row count")
	var returned int64
	must(conn.QueryRow(bg, "INSERT INTO items (id, grp, v) VALUES ($1, $2, $3) RETURNING id", int64(900), 1, "r900").Scan(&returned), "INSERT RETURNING")
	expect(returned, int64(900), "INSERT ... RETURNING id")
	ct, err = conn.Exec(bg, "DELETE FROM items WHERE id = $1", int64(900))
	must(err, "DELETE 900")
	expect(ct.RowsAffected(), int64(1), "DELETE 900 row count")
	expect(pgxCount(conn, "SELECT count(*) FROM items"), int64(3), "rows after crud")
	cell("crud")

	// prepared: explicit named statements, executed by name.
	_, err = conn.Prepare(bg, "matrix_read", "SELECT v FROM items WHERE id = $1")
	must(err, "Prepare read")
	for i := 0; i < 100; i++ {
		id := ids[i%len(ids)]
		var v string
		must(conn.QueryRow(bg, "matrix_read", id).Scan(&v), fmt.Sprintf("prepared read #%d", i))
		expect(v, fmt.Sprintf("u%d", id), fmt.Sprintf("prepared read #%d of %d", i, id))
	}
	_, err = conn.Prepare(bg, "matrix_bump", "UPDATE items SET grp = grp + 1 WHERE id = $1")
	must(err, "Prepare update")
	for i := 0; i < 30; i++ {
		id := ids[i%len(ids)]
		ct, err := conn.Exec(bg, "matrix_bump", id)
		must(err, fmt.Sprintf("prepared update #%d", i))
		expect(ct.RowsAffected(), int64(1), fmt.Sprintf("prepared update #%d row count", i))
	}
	for _, id := range ids {
		var grp int32
		must(conn.QueryRow(bg, "SELECT grp FROM items WHERE id = $1", id).Scan(&grp), "grp")
		expect(grp, int32(11), fmt.Sprintf("grp of %d", id))
	}
	cell("prepared")

	// multi_shard_read
	for id := int64(1001); id <= 1100; id++ {
		ct, err := conn.Exec(bg, "INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)", id, int32(id%5), fmt.Sprintf("m%d", id))
		must(err, fmt.Sprintf("INSERT %d", id))
		expect(ct.RowsAffected(), int64(1), fmt.Sprintf("INSERT %d row count", id))
	}
	expect(pgxCount(conn, "SELECT count(*) FROM items WHERE id BETWEEN $1 AND $2", int64(1001), int64(1100)), int64(100), "count BETWEEN")
	rows, err := conn.Query(bg, "SELECT grp, count(*) FROM items WHERE id BETWEEN 1001 AND 1100 GROUP BY grp ORDER BY grp")
	must(err, "GROUP BY")
	var groups []string
	for rows.Next() {
		var g int32
		var n int64
		must(rows.Scan(&g, &n), "GROUP BY scan")
		groups = append(groups, fmt.Sprintf("%d:%d", g, n))
	}
	must(rows.Err(), "GROUP BY rows")
	expect(groups, []string{"0:20", "1:20", "2:20", "3:20", "4:20"}, "GROUP BY grp")
	rows, err = conn.Query(bg, "SELECT id FROM items WHERE id BETWEEN 1001 AND 1100 ORDER BY id DESC LIMIT 3")
	must(err, "ORDER BY LIMIT")
	var top []int64
	for rows.Next() {
		var id int64
		must(rows.Scan(&id), "ORDER BY scan")
		top = append(top, id)
	}
	must(rows.Err(), "ORDER BY rows")
	expect(top, []int64{1100, 1099, 1098}, "ORDER BY id DESC LIMIT 3")
	expect(pgxCount(conn, "SELECT sum(id) FROM items WHERE id BETWEEN 1001 AND 1100"), int64(105050), "sum(id)")
	rows, err = conn.Query(bg, "SELECT id, v FROM items WHERE id = ANY($1)", []int64{1001, 1050, 1099})
	must(err, "ANY($1)")
	got := map[int64]string{}
	for rows.Next() {
		var id int64
		var v string
		must(rows.Scan(&id, &v), "ANY scan")
		if _, dup := got[id]; dup {
			failf("id = ANY: row %d twice", id)
		}
		got[id] = v
	}
	must(rows.Err(), "ANY rows")
	expect(got, map[int64]string{1001: "m1001", 1050: "m1050", 1099: "m1099"}, "id = ANY($1)")
	cell("multi_shard_read")

	// txn_one_shard, txn_two_shards
	pgxTxns(conn, []int64{ids[0]}, "c1", ids[0])
	cell("txn_one_shard")
	pgxTxns(conn, []int64{ids[0], ids[1]}, "c2", ids[1])
	cell("txn_two_shards")

	// batch: one pgx.Batch of 50 INSERTs (one round trip, one Sync).
	b := &pgx.Batch{}
	for _, id := range batchIDs {
		b.Queue("INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)", id, int32(7), fmt.Sprintf("b%d", id))
	}
	br := conn.SendBatch(bg, b)
	for i := range batchIDs {
		ct, err := br.Exec()
		must(err, fmt.Sprintf("batch INSERT #%d", i))
		expect(ct.RowsAffected(), int64(1), fmt.Sprintf("batch INSERT #%d row count", i))
	}
	must(br.Close(), "batch close")
	expect(pgxCount(conn, "SELECT count(*) FROM items WHERE grp = $1", int32(7)), int64(50), "count grp = 7")
	expect(pgxV(conn, batchIDs[49]), fmt.Sprintf("b%d", batchIDs[49]), "v of the last batch row")
	ct, err = conn.Exec(bg, "DELETE FROM items WHERE grp = $1", int32(7))
	must(err, "DELETE grp = 7")
	expect(ct.RowsAffected(), int64(50), "DELETE grp = 7 row count")
	cell("batch")

	// copy: text COPY through the low-level PgConn (pgx.CopyFrom, binary COPY: copy_binary.go).
	var data strings.Builder
	for id := 2001; id <= 2300; id++ {
		fmt.Fprintf(&data, "%d\t8\tc%d\n", id, id)
	}
	ct, err = conn.PgConn().CopyFrom(bg, strings.NewReader(data.String()), "COPY items (id, grp, v) FROM STDIN")
	must(err, "COPY FROM STDIN")
	expect(ct.RowsAffected(), int64(300), "COPY row count")
	expect(pgxCount(conn, "SELECT count(*) FROM items WHERE grp = $1", int32(8)), int64(300), "count grp = 8")
	expect(pgxV(conn, 2150), "c2150", "v of 2150")
	cell("copy")

	// concurrency: a pool of 20, each worker holding its own connection.
	cfg, err := pgxpool.ParseConfig(url)
	must(err, "pool config")
	cfg.MaxConns = 20
	pool, err := pgxpool.ConnectConfig(bg, cfg)
	must(err, "pool connect")
	defer pool.Close()
	for w := 0; w < 20; w++ {
		_, err := conn.Exec(bg, "INSERT INTO items (id, grp, v) VALUES ($1, 0, $2)", int64(3001+w), fmt.Sprintf("w%d", w))
		must(err, fmt.Sprintf("INSERT %d", 3001+w))
	}
	counts := make([]int64, 20)
	errs := make([]error, 20)
	var ready, wg sync.WaitGroup
	start := make(chan struct{})
	for w := 0; w < 20; w++ {
		ready.Add(1)
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			id := int64(3001 + w)
			c, err := pool.Acquire(bg)
			ready.Done()
			if err != nil {
				errs[w] = fmt.Errorf("acquire: %w", err)
				return
			}
			defer c.Release()
			<-start
			deadline := time.Now().Add(3 * time.Second)
			for time.Now().Before(deadline) {
				ct, err := c.Exec(bg, "UPDATE items SET grp = grp + 1 WHERE id = $1", id)
				if err != nil {
					errs[w] = fmt.Errorf("UPDATE %d: %w", id, err)
					return
				}
				if ct.RowsAffected() != 1 {
					errs[w] = fmt.Errorf("UPDATE %d: %d rows", id, ct.RowsAffected())
					return
				}
				counts[w]++
				var grp int32
				if err := c.QueryRow(bg, "SELECT grp FROM items WHERE id = $1", id).Scan(&grp); err != nil {
					errs[w] = fmt.Errorf("SELECT %d: %w", id, err)
					return
				}
				if int64(grp) != counts[w] {
					errs[w] = fmt.Errorf("worker %d read grp %d, expected its count %d", w, grp, counts[w])
					return
				}
			}
		}(w)
	}
	ready.Wait()
	close(start)
	wg.Wait()
	var sum int64
	for w := 0; w < 20; w++ {
		must(errs[w], fmt.Sprintf("worker %d", w))
		var grp int32
		must(conn.QueryRow(bg, "SELECT grp FROM items WHERE id = $1", int64(3001+w)).Scan(&grp), "final grp")
		expect(int64(grp), counts[w], fmt.Sprintf("final grp of %d", 3001+w))
		sum += counts[w]
	}
	if sum <= 0 {
		failf("concurrency: no updates")
	}
	fmt.Printf("concurrency ops=%d\n", sum)
	cell("concurrency")

	// cancel: a context cancelled after 300 ms. pgx v4 does not wait for the server's 57014:
	// it returns the context's error at once, closes the connection and sends a
	// CancelRequest in the background (asyncClose). So assert what pgx reports, that the
	// statement ended on the server (no pg_sleep(5) left running once the cancel was
	// delivered) and that the pool works right after.
	pc, err := pool.Acquire(bg)
	must(err, "acquire for cancel")
	ctx, cancel := context.WithCancel(bg)
	timer := time.AfterFunc(300*time.Millisecond, cancel)
	t0 := time.Now()
	_, err = pc.Exec(ctx, "SELECT pg_sleep(5)")
	elapsed := time.Since(t0)
	timer.Stop()
	cancel()
	if err == nil {
		failf("cancelled pg_sleep(5): no error after %v", elapsed)
	}
	if !errors.Is(err, context.Canceled) || !pgconn.Timeout(err) {
		failf("cancelled pg_sleep(5): expected pgx's timeout error wrapping context.Canceled, got %v (%T)", err, err)
	}
	if elapsed >= 3*time.Second {
		failf("cancel took %v, expected < 3s", elapsed)
	}
	cleanup := pc.Conn().PgConn().CleanupDone()
	pc.Release()
	select {
	case <-cleanup: // the CancelRequest was delivered and the connection closed
	case <-time.After(3 * time.Second):
		failf("cancel: pgx did not finish delivering the CancelRequest within 3 s")
	}
	pgxNoSleeper(pool, "SELECT pg_sleep(5)")
	must(pool.QueryRow(bg, "SELECT 1").Scan(&one), "pool SELECT 1 after cancel")
	expect(one, 1, "pool SELECT 1 after cancel")
	expect(pgxV(conn, ids[0]), "c2", "read after cancel")
	cell("cancel")

	// statement_timeout
	_, err = conn.Exec(bg, "SET statement_timeout = 300")
	must(err, "SET statement_timeout")
	t0 = time.Now()
	_, err = conn.Exec(bg, "SELECT pg_sleep(2)")
	elapsed = time.Since(t0)
	expect(pgState(err), "57014", fmt.Sprintf("pg_sleep(2) under statement_timeout = 300 (error %v after %v)", err, elapsed))
	if elapsed >= 1500*time.Millisecond {
		failf("statement_timeout took %v, expected < 1.5s", elapsed)
	}
	_, err = conn.Exec(bg, "RESET statement_timeout")
	must(err, "RESET statement_timeout")
	_, err = conn.Exec(bg, "SELECT pg_sleep(0.5)")
	must(err, "pg_sleep(0.5) after RESET")
	cell("statement_timeout")
}

// pgxNoSleeper waits (up to 1.5 s) until no backend of this database runs query.
func pgxNoSleeper(pool *pgxpool.Pool, query string) {
	deadline := time.Now().Add(1500 * time.Millisecond)
	for {
		var n int64
		must(pool.QueryRow(bg, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND query = $1", query).Scan(&n), "pg_stat_activity")
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			failf("cancel: %d backend(s) still running %q after the CancelRequest", n, query)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func pgxCount(conn *pgx.Conn, sql string, args ...interface{}) int64 {
	var n int64
	must(conn.QueryRow(bg, sql, args...).Scan(&n), sql)
	return n
}

// pgxV is v of id, "" when there is no row.
func pgxV(conn *pgx.Conn, id int64) string {
	var v string
	err := conn.QueryRow(bg, "SELECT v FROM items WHERE id = $1", id).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return ""
	}
	must(err, fmt.Sprintf("SELECT v of %d", id))
	return v
}

func pgxFreshV(id int64) string {
	c, err := pgx.Connect(bg, url)
	must(err, "fresh connect")
	defer c.Close(bg)
	return pgxV(c, id)
}

func pgxTxns(conn *pgx.Conn, txIDs []int64, tag string, dupID int64) {
	update := func(tx pgx.Tx, v string) {
		for _, id := range txIDs {
			ct, err := tx.Exec(bg, "UPDATE items SET v = $1 WHERE id = $2", v, id)
			must(err, fmt.Sprintf("UPDATE %d in txn", id))
			expect(ct.RowsAffected(), int64(1), fmt.Sprintf("UPDATE %d in txn row count", id))
		}
	}
	// a) commit
	tx, err := conn.Begin(bg)
	must(err, "BEGIN")
	update(tx, tag)
	must(tx.Commit(bg), "COMMIT")
	for _, id := range txIDs {
		expect(pgxFreshV(id), tag, fmt.Sprintf("after COMMIT, %d", id))
	}
	// b) rollback
	tx, err = conn.Begin(bg)
	must(err, "BEGIN")
	update(tx, "r1")
	must(tx.Rollback(bg), "ROLLBACK")
	for _, id := range txIDs {
		expect(pgxFreshV(id), tag, fmt.Sprintf("after ROLLBACK, %d", id))
	}
	// c) an error in the transaction, then rollback
	tx, err = conn.Begin(bg)
	must(err, "BEGIN")
	update(tx, "e1")
	_, err = tx.Exec(bg, "INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)", dupID, int32(0), "dup")
	expect(pgState(err), "23505", fmt.Sprintf("duplicate INSERT of %d (error %v)", dupID, err))
	must(tx.Rollback(bg), "ROLLBACK after error")
	for _, id := range txIDs {
		expect(pgxFreshV(id), tag, fmt.Sprintf("after error + ROLLBACK, %d", id))
		expect(pgxV(conn, id), tag, fmt.Sprintf("same connection after ROLLBACK, %d", id))
	}
	var one int
	must(conn.QueryRow(bg, "SELECT 1").Scan(&one), "SELECT 1 after ROLLBACK")
	expect(one, 1, "SELECT 1 after ROLLBACK")
}

// ---------------------------------------------------------------------------------------
// lib/pq through database/sql

func pqState(err error) string {
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		return string(pqErr.Code)
	}
	return ""
}

func pqDSN() string {
	if strings.Contains(url, "?") {
		return url + "&sslmode=disable"
	}
	return url + "?sslmode=disable"
}

func runPq() {
	db, err := sql.Open("postgres", pqDSN())
	must(err, "pq open")
	defer db.Close()
	db.SetMaxOpenConns(25)
	db.SetMaxIdleConns(25)

	// connect
	must(db.PingContext(bg), "ping")
	var one int
	must(db.QueryRow("SELECT 1").Scan(&one), "SELECT 1")
	expect(one, 1, "SELECT 1")
	var version string
	must(db.QueryRow("SHOW server_version").Scan(&version), "SHOW server_version")
	if version == "" {
		failf("SHOW server_version is empty")
	}
	cell("connect")

	// ddl
	_, err = db.Exec("DROP TABLE IF EXISTS items")
	must(err, "DROP TABLE")
	_, err = db.Exec("CREATE TABLE items (id bigint PRIMARY KEY, grp int NOT NULL, v text)")
	must(err, "CREATE TABLE")
	expect(pqCount(db, "SELECT count(*) FROM items"), int64(0), "count after CREATE")
	cell("ddl")

	// crud
	affected := func(r sql.Result, err error, what string) int64 {
		must(err, what)
		n, err := r.RowsAffected()
		must(err, what+" RowsAffected")
		return n
	}
	for _, id := range ids {
		r, err := db.Exec("INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)", id, 1, fmt.Sprintf("v%d", id))
		expect(affected(r, err, "INSERT"), int64(1), fmt.Sprintf("INSERT %d row count", id))
		expect(pqV(db, id), fmt.Sprintf("v%d", id), fmt.Sprintf("v of %d", id))
		r, err = db.Exec("UPDATE items SET v = $1 WHERE id = $2", fmt.Sprintf("u%d", id), id)
		expect(affected(r, err, "UPDATE"), int64(1), fmt.Sprintf("UPDATE %d row count", id))
		expect(pqV(db, id), fmt.Sprintf("u%d", id), fmt.Sprintf("v of %d after UPDATE", id))
	}
	last := ids[2]
	r, err := db.Exec("DELETE FROM items WHERE id = $1", last)
	expect(affected(r, err, "DELETE"), int64(1), "DELETE row count")
	var gone string
	err = db.QueryRow("SELECT v FROM items WHERE id = $1", last).Scan(&gone)
	if !errors.Is(err, sql.ErrNoRows) {
		failf("SELECT of deleted %d: expected no rows, got %v (%q)", last, err, gone)
	}
	r, err = db.Exec("INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)", last, 1, fmt.Sprintf("u%d", last))
	expect(affected(r, err, "re-INSERT"), int64(1), "re-INSERT row count")
	var returned int64
	must(db.QueryRow("INSERT INTO items (id, grp, v) VALUES ($1, $2, $3) RETURNING id", 900, 1, "r900").Scan(&returned), "INSERT RETURNING")
	expect(returned, int64(900), "INSERT ... RETURNING id")
	r, err = db.Exec("DELETE FROM items WHERE id = $1", 900)
	expect(affected(r, err, "DELETE 900"), int64(1), "DELETE 900 row count")
	expect(pqCount(db, "SELECT count(*) FROM items"), int64(3), "rows after crud")
	cell("crud")

	// prepared: db.Prepare (a named statement on each connection it runs on).
	read, err := db.Prepare("SELECT v FROM items WHERE id = $1")
	must(err, "Prepare read")
	for i := 0; i < 100; i++ {
		id := ids[i%len(ids)]
		var v string
		must(read.QueryRow(id).Scan(&v), fmt.Sprintf("prepared read #%d", i))
		expect(v, fmt.Sprintf("u%d", id), fmt.Sprintf("prepared read #%d of %d", i, id))
	}
	must(read.Close(), "close read")
	bump, err := db.Prepare("UPDATE items SET grp = grp + 1 WHERE id = $1")
	must(err, "Prepare update")
	for i := 0; i < 30; i++ {
		id := ids[i%len(ids)]
		r, err := bump.Exec(id)
		expect(affected(r, err, "prepared UPDATE"), int64(1), fmt.Sprintf("prepared update #%d row count", i))
	}
	must(bump.Close(), "close update")
	for _, id := range ids {
		var grp int
		must(db.QueryRow("SELECT grp FROM items WHERE id = $1", id).Scan(&grp), "grp")
		expect(grp, 11, fmt.Sprintf("grp of %d", id))
	}
	cell("prepared")

	// multi_shard_read
	for id := int64(1001); id <= 1100; id++ {
		r, err := db.Exec("INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)", id, id%5, fmt.Sprintf("m%d", id))
		expect(affected(r, err, "INSERT"), int64(1), fmt.Sprintf("INSERT %d row count", id))
	}
	expect(pqCount(db, "SELECT count(*) FROM items WHERE id BETWEEN $1 AND $2", 1001, 1100), int64(100), "count BETWEEN")
	rows, err := db.Query("SELECT grp, count(*) FROM items WHERE id BETWEEN 1001 AND 1100 GROUP BY grp ORDER BY grp")
	must(err, "GROUP BY")
	var groups []string
	for rows.Next() {
		var g, n int64
		must(rows.Scan(&g, &n), "GROUP BY scan")
		groups = append(groups, fmt.Sprintf("%d:%d", g, n))
	}
	must(rows.Err(), "GROUP BY rows")
	rows.Close()
	expect(groups, []string{"0:20", "1:20", "2:20", "3:20", "4:20"}, "GROUP BY grp")
	rows, err = db.Query("SELECT id FROM items WHERE id BETWEEN 1001 AND 1100 ORDER BY id DESC LIMIT 3")
	must(err, "ORDER BY LIMIT")
	var top []int64
	for rows.Next() {
		var id int64
		must(rows.Scan(&id), "ORDER BY scan")
		top = append(top, id)
	}
	must(rows.Err(), "ORDER BY rows")
	rows.Close()
	expect(top, []int64{1100, 1099, 1098}, "ORDER BY id DESC LIMIT 3")
	expect(pqCount(db, "SELECT sum(id) FROM items WHERE id BETWEEN 1001 AND 1100"), int64(105050), "sum(id)")
	rows, err = db.Query("SELECT id, v FROM items WHERE id = ANY($1)", pq.Array([]int64{1001, 1050, 1099}))
	must(err, "ANY($1)")
	got := map[int64]string{}
	for rows.Next() {
		var id int64
		var v string
		must(rows.Scan(&id, &v), "ANY scan")
		if _, dup := got[id]; dup {
			failf("id = ANY: row %d twice", id)
		}
		got[id] = v
	}
	must(rows.Err(), "ANY rows")
	rows.Close()
	expect(got, map[int64]string{1001: "m1001", 1050: "m1050", 1099: "m1099"}, "id = ANY($1)")
	cell("multi_shard_read")

	// txn_one_shard, txn_two_shards
	pqTxns(db, []int64{ids[0]}, "c1", ids[0])
	cell("txn_one_shard")
	pqTxns(db, []int64{ids[0], ids[1]}, "c2", ids[1])
	cell("txn_two_shards")

	// batch: a prepared INSERT executed 50 times in a transaction.
	tx, err := db.Begin()
	must(err, "batch BEGIN")
	ins, err := tx.Prepare("INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)")
	must(err, "batch Prepare")
	for i, id := range batchIDs {
		r, err := ins.Exec(id, 7, fmt.Sprintf("b%d", id))
		expect(affected(r, err, "batch INSERT"), int64(1), fmt.Sprintf("batch INSERT #%d row count", i))
	}
	must(ins.Close(), "batch stmt close")
	must(tx.Commit(), "batch COMMIT")
	expect(pqCount(db, "SELECT count(*) FROM items WHERE grp = $1", 7), int64(50), "count grp = 7")
	expect(pqV(db, batchIDs[49]), fmt.Sprintf("b%d", batchIDs[49]), "v of the last batch row")
	r, err = db.Exec("DELETE FROM items WHERE grp = $1", 7)
	expect(affected(r, err, "DELETE grp = 7"), int64(50), "DELETE grp = 7 row count")
	cell("batch")

	// copy: pq.CopyIn in a transaction.
	tx, err = db.Begin()
	must(err, "copy BEGIN")
	cp, err := tx.Prepare(pq.CopyIn("items", "id", "grp", "v"))
	must(err, "copy Prepare")
	for id := 2001; id <= 2300; id++ {
		_, err := cp.Exec(id, 8, fmt.Sprintf("c%d", id))
		must(err, fmt.Sprintf("copy row %d", id))
	}
	r, err = cp.Exec()
	expect(affected(r, err, "copy end"), int64(300), "COPY row count")
	must(cp.Close(), "copy stmt close")
	must(tx.Commit(), "copy COMMIT")
	expect(pqCount(db, "SELECT count(*) FROM items WHERE grp = $1", 8), int64(300), "count grp = 8")
	expect(pqV(db, 2150), "c2150", "v of 2150")
	cell("copy")

	// concurrency: 20 workers, each with its own *sql.Conn.
	for w := 0; w < 20; w++ {
		_, err := db.Exec("INSERT INTO items (id, grp, v) VALUES ($1, 0, $2)", 3001+w, fmt.Sprintf("w%d", w))
		must(err, fmt.Sprintf("INSERT %d", 3001+w))
	}
	counts := make([]int64, 20)
	errs := make([]error, 20)
	var ready, wg sync.WaitGroup
	start := make(chan struct{})
	for w := 0; w < 20; w++ {
		ready.Add(1)
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			id := int64(3001 + w)
			c, err := db.Conn(bg)
			ready.Done()
			if err != nil {
				errs[w] = fmt.Errorf("conn: %w", err)
				return
			}
			defer c.Close()
			up, err := c.PrepareContext(bg, "UPDATE items SET grp = grp + 1 WHERE id = $1")
			if err != nil {
				errs[w] = fmt.Errorf("prepare UPDATE: %w", err)
				return
			}
			defer up.Close()
			sel, err := c.PrepareContext(bg, "SELECT grp FROM items WHERE id = $1")
			if err != nil {
				errs[w] = fmt.Errorf("prepare SELECT: %w", err)
				return
			}
			defer sel.Close()
			<-start
			deadline := time.Now().Add(3 * time.Second)
			for time.Now().Before(deadline) {
				r, err := up.Exec(id)
				if err != nil {
					errs[w] = fmt.Errorf("UPDATE %d: %w", id, err)
					return
				}
				if n, _ := r.RowsAffected(); n != 1 {
					errs[w] = fmt.Errorf("UPDATE %d: %d rows", id, n)
					return
				}
				counts[w]++
				var grp int64
				if err := sel.QueryRow(id).Scan(&grp); err != nil {
					errs[w] = fmt.Errorf("SELECT %d: %w", id, err)
					return
				}
				if grp != counts[w] {
					errs[w] = fmt.Errorf("worker %d read grp %d, expected its count %d", w, grp, counts[w])
					return
				}
			}
		}(w)
	}
	ready.Wait()
	close(start)
	wg.Wait()
	var sum int64
	for w := 0; w < 20; w++ {
		must(errs[w], fmt.Sprintf("worker %d", w))
		expect(pqCount(db, "SELECT grp FROM items WHERE id = $1", 3001+w), counts[w], fmt.Sprintf("final grp of %d", 3001+w))
		sum += counts[w]
	}
	if sum <= 0 {
		failf("concurrency: no updates")
	}
	fmt.Printf("concurrency ops=%d\n", sum)
	cell("concurrency")

	// cancel: QueryContext with a context cancelled after 300 ms; lib/pq sends a
	// CancelRequest and returns the server's 57014 (and drops that connection from the pool).
	ctx, cancel := context.WithCancel(bg)
	timer := time.AfterFunc(300*time.Millisecond, cancel)
	t0 := time.Now()
	rows, err = db.QueryContext(ctx, "SELECT pg_sleep(5)")
	if err == nil {
		for rows.Next() {
		}
		err = rows.Err()
		rows.Close()
		if err == nil {
			err = errors.New("no error")
		}
	}
	elapsed := time.Since(t0)
	timer.Stop()
	cancel()
	expect(pqState(err), "57014", fmt.Sprintf("cancelled pg_sleep(5) (error %v after %v)", err, elapsed))
	if elapsed >= 3*time.Second {
		failf("cancel took %v, expected < 3s", elapsed)
	}
	must(db.QueryRow("SELECT 1").Scan(&one), "SELECT 1 after cancel")
	expect(one, 1, "SELECT 1 after cancel")
	expect(pqV(db, ids[0]), "c2", "read after cancel")
	cell("cancel")

	// statement_timeout: on one connection of the pool.
	c, err := db.Conn(bg)
	must(err, "conn for statement_timeout")
	_, err = c.ExecContext(bg, "SET statement_timeout = 300")
	must(err, "SET statement_timeout")
	t0 = time.Now()
	_, err = c.ExecContext(bg, "SELECT pg_sleep(2)")
	elapsed = time.Since(t0)
	expect(pqState(err), "57014", fmt.Sprintf("pg_sleep(2) under statement_timeout = 300 (error %v after %v)", err, elapsed))
	if elapsed >= 1500*time.Millisecond {
		failf("statement_timeout took %v, expected < 1.5s", elapsed)
	}
	_, err = c.ExecContext(bg, "RESET statement_timeout")
	must(err, "RESET statement_timeout")
	_, err = c.ExecContext(bg, "SELECT pg_sleep(0.5)")
	must(err, "pg_sleep(0.5) after RESET")
	must(c.Close(), "conn close")
	cell("statement_timeout")
}

func pqCount(db *sql.DB, query string, args ...interface{}) int64 {
	var n int64
	must(db.QueryRow(query, args...).Scan(&n), query)
	return n
}

// pqV is v of id, "" when there is no row.
func pqV(db *sql.DB, id int64) string {
	var v string
	err := db.QueryRow("SELECT v FROM items WHERE id = $1", id).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return ""
	}
	must(err, fmt.Sprintf("SELECT v of %d", id))
	return v
}

func pqFreshV(id int64) string {
	db, err := sql.Open("postgres", pqDSN())
	must(err, "fresh open")
	defer db.Close()
	return pqV(db, id)
}

func pqTxns(db *sql.DB, txIDs []int64, tag string, dupID int64) {
	update := func(tx *sql.Tx, v string) {
		for _, id := range txIDs {
			r, err := tx.Exec("UPDATE items SET v = $1 WHERE id = $2", v, id)
			must(err, fmt.Sprintf("UPDATE %d in txn", id))
			n, err := r.RowsAffected()
			must(err, "RowsAffected")
			expect(n, int64(1), fmt.Sprintf("UPDATE %d in txn row count", id))
		}
	}
	// a) commit
	tx, err := db.Begin()
	must(err, "BEGIN")
	update(tx, tag)
	must(tx.Commit(), "COMMIT")
	for _, id := range txIDs {
		expect(pqFreshV(id), tag, fmt.Sprintf("after COMMIT, %d", id))
	}
	// b) rollback
	tx, err = db.Begin()
	must(err, "BEGIN")
	update(tx, "r1")
	must(tx.Rollback(), "ROLLBACK")
	for _, id := range txIDs {
		expect(pqFreshV(id), tag, fmt.Sprintf("after ROLLBACK, %d", id))
	}
	// c) an error in the transaction, then rollback
	tx, err = db.Begin()
	must(err, "BEGIN")
	update(tx, "e1")
	_, err = tx.Exec("INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)", dupID, 0, "dup")
	expect(pqState(err), "23505", fmt.Sprintf("duplicate INSERT of %d (error %v)", dupID, err))
	must(tx.Rollback(), "ROLLBACK after error")
	for _, id := range txIDs {
		expect(pqFreshV(id), tag, fmt.Sprintf("after error + ROLLBACK, %d", id))
		expect(pqV(db, id), tag, fmt.Sprintf("pool after ROLLBACK, %d", id))
	}
	var one int
	must(db.QueryRow("SELECT 1").Scan(&one), "SELECT 1 after ROLLBACK")
	expect(one, 1, "SELECT 1 after ROLLBACK")
}
