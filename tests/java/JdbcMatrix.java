// Driver matrix (tests/driver_matrix.rs): pgjdbc through the proxy, the 12 scenarios of the
// matrix contract with JDBC's ordinary API — PreparedStatement (named server statements after
// prepareThreshold=5 uses), setAutoCommit(false) + commit/rollback, addBatch/executeBatch
// (also with reWriteBatchedInserts=true), CopyManager.copyIn, a thread per Connection,
// Statement.cancel() from another thread, SET statement_timeout.
//
// usage: java -cp postgresql.jar JdbcMatrix.java jdbc URL IDS BATCH_IDS
//   URL: postgresql://user[:password]@host:port/db (turned into a jdbc:postgresql:// URL)
//   IDS: 3 ids, IDS[s] on shard s; BATCH_IDS: 50 ids on one shard
import java.io.StringReader;
import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.sql.*;
import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.*;
import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;

public class JdbcMatrix {
    static String jdbcUrl;
    static Properties props = new Properties();
    static long[] ids;
    static long[] batchIds;

    static void fail(String what) {
        throw new AssertionError(what);
    }

    static void expect(Object got, Object want, String what) {
        if (!Objects.equals(got, want)) fail(what + ": expected " + want + ", got " + got);
    }

    static void cell(String name) {
        System.out.println("CELL " + name + " ok");
        System.out.flush();
    }

    static Connection connect() throws SQLException {
        return DriverManager.getConnection(jdbcUrl, props);
    }

    static Connection connect(Properties extra) throws SQLException {
        Properties p = new Properties();
        p.putAll(props);
        p.putAll(extra);
        return DriverManager.getConnection(jdbcUrl, p);
    }

    // One value of a one-row, one-column query with bound parameters; null when no row.
    static Object one(Connection c, String sql, Object... params) throws SQLException {
        try (PreparedStatement s = c.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++) s.setObject(i + 1, params[i]);
            try (ResultSet r = s.executeQuery()) {
                if (!r.next()) return null;
                Object v = r.getObject(1);
                if (r.next()) fail(sql + ": more than one row");
                return v;
            }
        }
    }

    static int update(Connection c, String sql, Object... params) throws SQLException {
        try (PreparedStatement s = c.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++) s.setObject(i + 1, params[i]);
            return s.executeUpdate();
        }
    }

    static String v(Connection c, long id) throws SQLException {
        return (String) one(c, "SELECT v FROM items WHERE id = ?", id);
    }

    static long count(Connection c, String sql, Object... params) throws SQLException {
        return ((Number) one(c, sql, params)).longValue();
    }

    static String sqlState(Throwable e) {
        while (e != null) {
            if (e instanceof SQLException && ((SQLException) e).getSQLState() != null)
                return ((SQLException) e).getSQLState();
            e = e.getCause();
        }
        return null;
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 4 || !args[0].equals("jdbc")) {
            System.err.println("usage: JdbcMatrix jdbc URL IDS BATCH_IDS");
            System.exit(2);
        }
        URI u = new URI(args[1]);
        String userInfo = u.getRawUserInfo();
        String user = userInfo, password = null;
        if (userInfo != null && userInfo.contains(":")) {
            user = userInfo.substring(0, userInfo.indexOf(':'));
            password = userInfo.substring(userInfo.indexOf(':') + 1);
        }
        props.setProperty("user", URLDecoder.decode(user, StandardCharsets.UTF_8));
        if (password != null) props.setProperty("password", URLDecoder.decode(password, StandardCharsets.UTF_8));
        jdbcUrl = "jdbc:postgresql://" + u.getHost() + ":" + (u.getPort() > 0 ? u.getPort() : 5432)
                + u.getRawPath() + "?sslmode=disable";
        ids = Arrays.stream(args[2].split(",")).mapToLong(Long::parseLong).toArray();
        batchIds = Arrays.stream(args[3].split(",")).mapToLong(Long::parseLong).toArray();
        if (ids.length != 3) fail("IDS: expected 3 ids, got " + ids.length);
        if (batchIds.length != 50) fail("BATCH_IDS: expected 50 ids, got " + batchIds.length);

        try (Connection c = connect()) {
            connectCell(c);
            ddl(c);
            crud(c);
            prepared(c);
            multiShardRead(c);
            txnOneShard(c);
            txnTwoShards(c);
            batch(c);
            copy(c);
            concurrency(c);
            cancel(c);
            statementTimeout(c);
        }
        System.out.println("matrix done");
    }

    // 1
    static void connectCell(Connection c) throws SQLException {
        expect(one(c, "SELECT 1"), 1, "SELECT 1");
        String version = (String) one(c, "SHOW server_version");
        if (version == null || version.isEmpty()) fail("SHOW server_version is empty");
        String meta = c.getMetaData().getDatabaseProductVersion();
        if (meta == null || meta.isEmpty()) fail("DatabaseMetaData product version is empty");
        cell("connect");
    }

    // 2
    static void ddl(Connection c) throws SQLException {
        try (Statement s = c.createStatement()) {
            s.execute("DROP TABLE IF EXISTS items");
            s.execute("CREATE TABLE items (id bigint PRIMARY KEY, grp int NOT NULL, v text)");
        }
        expect(count(c, "SELECT count(*) FROM items"), 0L, "count after CREATE");
        cell("ddl");
    }

    // 3
    static void crud(Connection c) throws SQLException {
        for (long id : ids) {
            expect(update(c, "INSERT INTO items (id, grp, v) VALUES (?, ?, ?)", id, 1, "v" + id), 1,
                    "INSERT " + id + " row count");
            expect(v(c, id), "v" + id, "SELECT v of " + id);
            expect(update(c, "UPDATE items SET v = ? WHERE id = ?", "u" + id, id), 1, "UPDATE " + id + " row count");
            expect(v(c, id), "u" + id, "SELECT v of " + id + " after UPDATE");
        }
        long last = ids[2];
        expect(update(c, "DELETE FROM items WHERE id = ?", last), 1, "DELETE " + last + " row count");
        expect(v(c, last), null, "SELECT of deleted " + last);
        expect(update(c, "INSERT INTO items (id, grp, v) VALUES (?, ?, ?)", last, 1, "u" + last), 1,
                "re-INSERT " + last);
        expect(v(c, last), "u" + last, "SELECT of re-inserted " + last);
        try (PreparedStatement s = c.prepareStatement("INSERT INTO items (id, grp, v) VALUES (?, ?, ?) RETURNING id")) {
            s.setLong(1, 900);
            s.setInt(2, 1);
            s.setString(3, "r900");
            try (ResultSet r = s.executeQuery()) {
                if (!r.next()) fail("INSERT ... RETURNING id: no row");
                expect(r.getLong(1), 900L, "INSERT ... RETURNING id");
                if (r.next()) fail("INSERT ... RETURNING id: more than one row");
            }
        }
        expect(update(c, "DELETE FROM items WHERE id = ?", 900L), 1, "DELETE 900 row count");
        expect(count(c, "SELECT count(*) FROM items"), 3L, "rows after crud");
        cell("crud");
    }

    // 4: one PreparedStatement each, reused; pgjdbc moves to a named server-side statement
    // after prepareThreshold (5) executions.
    static void prepared(Connection c) throws SQLException {
        try (PreparedStatement s = c.prepareStatement("SELECT v FROM items WHERE id = ?")) {
            for (int i = 0; i < 100; i++) {
                long id = ids[i % ids.length];
                s.setLong(1, id);
                try (ResultSet r = s.executeQuery()) {
                    if (!r.next()) fail("prepared SELECT #" + i + " of " + id + ": no row");
                    expect(r.getString(1), "u" + id, "prepared SELECT #" + i + " of " + id);
                    if (r.next()) fail("prepared SELECT #" + i + ": more than one row");
                }
            }
        }
        try (PreparedStatement s = c.prepareStatement("UPDATE items SET grp = grp + 1 WHERE id = ?")) {
            for (int i = 0; i < 30; i++) {
                long id = ids[i % ids.length];
                s.setLong(1, id);
                expect(s.executeUpdate(), 1, "prepared UPDATE #" + i + " of " + id);
            }
        }
        for (long id : ids) expect(one(c, "SELECT grp FROM items WHERE id = ?", id), 11, "grp of " + id);
        cell("prepared");
    }

    // 5
    static void multiShardRead(Connection c) throws SQLException {
        try (PreparedStatement s = c.prepareStatement("INSERT INTO items (id, grp, v) VALUES (?, ?, ?)")) {
            for (long id = 1001; id <= 1100; id++) {
                s.setLong(1, id);
                s.setInt(2, (int) (id % 5));
                s.setString(3, "m" + id);
                expect(s.executeUpdate(), 1, "INSERT " + id);
            }
        }
        expect(count(c, "SELECT count(*) FROM items WHERE id BETWEEN ? AND ?", 1001L, 1100L), 100L,
                "count BETWEEN 1001 AND 1100");
        List<String> groups = new ArrayList<>();
        try (PreparedStatement s = c.prepareStatement(
                "SELECT grp, count(*) FROM items WHERE id BETWEEN 1001 AND 1100 GROUP BY grp ORDER BY grp");
             ResultSet r = s.executeQuery()) {
            while (r.next()) groups.add(r.getInt(1) + ":" + r.getLong(2));
        }
        expect(groups, List.of("0:20", "1:20", "2:20", "3:20", "4:20"), "GROUP BY grp");
        List<Long> top = new ArrayList<>();
        try (PreparedStatement s = c.prepareStatement(
                "SELECT id FROM items WHERE id BETWEEN 1001 AND 1100 ORDER BY id DESC LIMIT 3");
             ResultSet r = s.executeQuery()) {
            while (r.next()) top.add(r.getLong(1));
        }
        expect(top, List.of(1100L, 1099L, 1098L), "ORDER BY id DESC LIMIT 3");
        expect(((Number) one(c, "SELECT sum(id) FROM items WHERE id BETWEEN 1001 AND 1100")).longValue(), 105050L,
                "sum(id)");
        Map<Long, String> rows = new TreeMap<>();
        try (PreparedStatement s = c.prepareStatement("SELECT id, v FROM items WHERE id = ANY(?)")) {
            s.setArray(1, c.createArrayOf("bigint", new Long[] {1001L, 1050L, 1099L}));
            try (ResultSet r = s.executeQuery()) {
                while (r.next()) {
                    if (rows.put(r.getLong(1), r.getString(2)) != null) fail("id = ANY: duplicate row " + r.getLong(1));
                }
            }
        }
        expect(rows, new TreeMap<>(Map.of(1001L, "m1001", 1050L, "m1050", 1099L, "m1099")), "id = ANY(array)");
        cell("multi_shard_read");
    }

    // 6 and 7: autocommit off, commit / rollback / an error then rollback.
    static void transactions(Connection c, long[] txIds, String tag, long dupId) throws SQLException {
        c.setAutoCommit(false);
        try {
            // a) commit
            for (long id : txIds)
                expect(update(c, "UPDATE items SET v = ? WHERE id = ?", tag, id), 1, "UPDATE " + id + " in txn");
            c.commit();
            for (long id : txIds) expect(freshV(id), tag, "after COMMIT, " + id);
            // b) rollback
            for (long id : txIds)
                expect(update(c, "UPDATE items SET v = ? WHERE id = ?", "r1", id), 1, "UPDATE " + id + " in txn");
            for (long id : txIds) expect(v(c, id), "r1", "own write of " + id + " before ROLLBACK");
            c.rollback();
            for (long id : txIds) expect(freshV(id), tag, "after ROLLBACK, " + id);
            // c) an error in the transaction, then rollback
            for (long id : txIds)
                expect(update(c, "UPDATE items SET v = ? WHERE id = ?", "e1", id), 1, "UPDATE " + id + " in txn");
            String state = null;
            try {
                update(c, "INSERT INTO items (id, grp, v) VALUES (?, ?, ?)", dupId, 0, "dup");
            } catch (SQLException e) {
                state = e.getSQLState();
            }
            expect(state, "23505", "duplicate INSERT of " + dupId + " SQLSTATE");
            c.rollback();
            for (long id : txIds) expect(freshV(id), tag, "after error + ROLLBACK, " + id);
            for (long id : txIds) expect(v(c, id), tag, "same connection after ROLLBACK, " + id);
            expect(one(c, "SELECT 1"), 1, "SELECT 1 after ROLLBACK");
            c.commit();
        } finally {
            c.setAutoCommit(true);
        }
    }

    static String freshV(long id) throws SQLException {
        try (Connection other = connect()) {
            return v(other, id);
        }
    }

    static void txnOneShard(Connection c) throws SQLException {
        transactions(c, new long[] {ids[0]}, "c1", ids[0]);
        cell("txn_one_shard");
    }

    static void txnTwoShards(Connection c) throws SQLException {
        transactions(c, new long[] {ids[0], ids[1]}, "c2", ids[1]);
        cell("txn_two_shards");
    }

    // 8: addBatch/executeBatch, then again with reWriteBatchedInserts=true (multi-row VALUES).
    static void batch(Connection c) throws SQLException {
        runBatch(c, false);
        Properties rewrite = new Properties();
        rewrite.setProperty("reWriteBatchedInserts", "true");
        try (Connection r = connect(rewrite)) {
            runBatch(r, true);
        }
        cell("batch");
    }

    static void runBatch(Connection c, boolean rewritten) throws SQLException {
        String how = rewritten ? "reWriteBatchedInserts " : "";
        try (PreparedStatement s = c.prepareStatement("INSERT INTO items (id, grp, v) VALUES (?, ?, ?)")) {
            for (long id : batchIds) {
                s.setLong(1, id);
                s.setInt(2, 7);
                s.setString(3, "b" + id);
                s.addBatch();
            }
            int[] counts = s.executeBatch();
            long total = 0;
            for (int n : counts) {
                if (n == Statement.SUCCESS_NO_INFO) continue;
                if (n < 0) fail(how + "executeBatch: a count of " + n);
                total += n;
            }
            boolean noInfo = Arrays.stream(counts).anyMatch(n -> n == Statement.SUCCESS_NO_INFO);
            if (!noInfo) {
                expect(counts.length, 50, how + "executeBatch counts");
                expect(total, 50L, how + "executeBatch rows");
            }
        }
        expect(count(c, "SELECT count(*) FROM items WHERE grp = 7"), 50L, how + "count grp = 7");
        for (long id : new long[] {batchIds[0], batchIds[49]})
            expect(v(c, id), "b" + id, how + "v of " + id);
        expect(update(c, "DELETE FROM items WHERE grp = ?", 7), 50, how + "DELETE grp = 7 row count");
    }

    // 9
    static void copy(Connection c) throws Exception {
        StringBuilder data = new StringBuilder();
        for (long id = 2001; id <= 2300; id++) data.append(id).append('\t').append(8).append('\t').append("c" + id).append('\n');
        CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
        long rows = copy.copyIn("COPY items (id, grp, v) FROM STDIN", new StringReader(data.toString()));
        expect(rows, 300L, "copyIn row count");
        expect(count(c, "SELECT count(*) FROM items WHERE grp = ?", 8), 300L, "count grp = 8");
        expect(v(c, 2150), "c2150", "v of 2150");
        cell("copy");
    }

    // 10: 20 threads, each with its own Connection, for 3 seconds.
    static void concurrency(Connection c) throws Exception {
        final int workers = 20;
        try (PreparedStatement s = c.prepareStatement("INSERT INTO items (id, grp, v) VALUES (?, 0, ?)")) {
            for (int w = 0; w < workers; w++) {
                s.setLong(1, 3001 + w);
                s.setString(2, "w" + w);
                expect(s.executeUpdate(), 1, "INSERT " + (3001 + w));
            }
        }
        ExecutorService pool = Executors.newFixedThreadPool(workers);
        CyclicBarrier start = new CyclicBarrier(workers);
        List<Future<Long>> results = new ArrayList<>();
        for (int w = 0; w < workers; w++) {
            final long id = 3001 + w;
            results.add(pool.submit(() -> {
                try (Connection own = connect();
                     PreparedStatement up = own.prepareStatement("UPDATE items SET grp = grp + 1 WHERE id = ?");
                     PreparedStatement read = own.prepareStatement("SELECT grp FROM items WHERE id = ?")) {
                    start.await(20, TimeUnit.SECONDS);
                    long deadline = System.nanoTime() + 3_000_000_000L;
                    long n = 0;
                    up.setLong(1, id);
                    read.setLong(1, id);
                    while (System.nanoTime() < deadline) {
                        expect(up.executeUpdate(), 1, "worker UPDATE " + id);
                        n++;
                        try (ResultSet r = read.executeQuery()) {
                            if (!r.next()) fail("worker SELECT " + id + ": no row");
                            expect((long) r.getInt(1), n, "worker " + id + " read of its own count");
                        }
                    }
                    return n;
                }
            }));
        }
        long sum = 0;
        try {
            for (int w = 0; w < workers; w++) {
                long n;
                try {
                    n = results.get(w).get(30, TimeUnit.SECONDS);
                } catch (ExecutionException e) {
                    throw new AssertionError("worker " + w + " failed: " + e.getCause(), e.getCause());
                }
                expect(((Number) one(c, "SELECT grp FROM items WHERE id = ?", 3001L + w)).longValue(), n,
                        "final grp of " + (3001 + w));
                sum += n;
            }
        } finally {
            pool.shutdownNow();
        }
        if (sum <= 0) fail("concurrency: no updates");
        System.out.println("concurrency ops=" + sum);
        cell("concurrency");
    }

    // 11: Statement.cancel() from another thread.
    static void cancel(Connection c) throws Exception {
        ScheduledExecutorService timer = Executors.newSingleThreadScheduledExecutor();
        try (Statement s = c.createStatement()) {
            ScheduledFuture<?> canceller = timer.schedule(() -> {
                s.cancel();
                return null;
            }, 300, TimeUnit.MILLISECONDS);
            long t0 = System.nanoTime();
            String state = null;
            try {
                s.executeQuery("SELECT pg_sleep(5)").close();
            } catch (SQLException e) {
                state = e.getSQLState();
                if (!"57014".equals(state)) e.printStackTrace();
            }
            long ms = (System.nanoTime() - t0) / 1_000_000;
            canceller.get(5, TimeUnit.SECONDS);
            expect(state, "57014", "cancelled pg_sleep(5) SQLSTATE (after " + ms + " ms)");
            if (ms >= 3000) fail("cancel took " + ms + " ms, expected < 3000");
        } finally {
            timer.shutdownNow();
        }
        expect(one(c, "SELECT 1"), 1, "SELECT 1 after cancel");
        expect(v(c, ids[0]), "c2", "read after cancel");
        cell("cancel");
    }

    // 12
    static void statementTimeout(Connection c) throws SQLException {
        try (Statement s = c.createStatement()) {
            s.execute("SET statement_timeout = 300");
            long t0 = System.nanoTime();
            String state = null;
            try {
                s.executeQuery("SELECT pg_sleep(2)").close();
            } catch (SQLException e) {
                state = e.getSQLState();
            }
            long ms = (System.nanoTime() - t0) / 1_000_000;
            expect(state, "57014", "pg_sleep(2) under statement_timeout = 300 SQLSTATE (after " + ms + " ms)");
            if (ms >= 1500) fail("statement_timeout took " + ms + " ms, expected < 1500");
            s.execute("RESET statement_timeout");
            try (ResultSet r = s.executeQuery("SELECT pg_sleep(0.5)")) {
                if (!r.next()) fail("pg_sleep(0.5): no row");
            }
        }
        cell("statement_timeout");
    }
}
