// pgjdbc through the proxy (issue 16): with autocommit off the driver pipelines BEGIN with
// the first statement of each transaction; transactions whose first key is on each shard,
// committed and rolled back, from several threads at once.
//
// usage: java -cp postgresql.jar JdbcHabits.java JDBC_URL ID[,ID...]
import java.sql.*;
import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.*;

public class JdbcHabits {
    public static void main(String[] args) throws Exception {
        String url = args[0];
        long[] ids = Arrays.stream(args[1].split(",")).mapToLong(Long::parseLong).toArray();
        try (Connection c = DriverManager.getConnection(url, "app", "app-secret")) {
            c.setAutoCommit(false);
            for (long first : ids) {
                for (long other : ids) {
                    try (PreparedStatement s = c.prepareStatement("SELECT name FROM users WHERE id = ?")) {
                        s.setLong(1, first);
                        try (ResultSet r = s.executeQuery()) {
                            if (!r.next() || !r.getString(1).equals("user-" + first))
                                throw new AssertionError("first " + first);
                        }
                    }
                    try (PreparedStatement u = c.prepareStatement("UPDATE users SET name = ? WHERE id = ?")) {
                        u.setString(1, "jdbc");
                        u.setLong(2, other);
                        if (u.executeUpdate() != 1) throw new AssertionError("update " + other);
                    }
                    c.rollback();
                }
            }
        }
        // executeBatch of different statements on every shard (issue 19): one pipeline, one
        // transaction across the shards (autocommit: the proxy's; else the client's block).
        try (Connection c = DriverManager.getConnection(url, "app", "app-secret")) {
            try (Statement st = c.createStatement()) {
                for (long id : ids) st.addBatch("UPDATE users SET name = 'jb' WHERE id = " + id);
                for (int n : st.executeBatch()) if (n != 1) throw new AssertionError("batch count " + n);
                for (long id : ids) st.addBatch("UPDATE users SET name = 'jx' WHERE id = " + id);
                st.addBatch("UPDATE users SET name = (1/0)::text WHERE id = " + ids[1]);
                try {
                    st.executeBatch();
                    throw new AssertionError("the failing batch succeeded");
                } catch (BatchUpdateException e) {
                    // expected: division by zero
                }
                try (ResultSet r = st.executeQuery("SELECT count(*) FROM users WHERE name = 'jb'")) {
                    r.next();
                    if (r.getLong(1) != ids.length) throw new AssertionError("batch: " + r.getLong(1) + " rows 'jb'");
                }
            }
            c.setAutoCommit(false);
            try (Statement st = c.createStatement()) {
                for (long id : ids) st.addBatch("UPDATE users SET name = 'user-' || id WHERE id = " + id);
                st.executeBatch();
                c.commit();
                try (ResultSet r = st.executeQuery("SELECT count(*) FROM users WHERE name = 'jb'")) {
                    r.next();
                    if (r.getLong(1) != 0) throw new AssertionError("names not restored");
                }
                c.commit();
            }
        }
        ExecutorService pool = Executors.newFixedThreadPool(8);
        AtomicInteger errors = new AtomicInteger();
        List<Future<?>> done = new ArrayList<>();
        for (int t = 0; t < 8; t++) {
            final int thread = t;
            done.add(pool.submit(() -> {
                try (Connection c = DriverManager.getConnection(url, "app", "app-secret")) {
                    c.setAutoCommit(false);
                    for (int i = 0; i < 100; i++) {
                        long id = ids[(thread + i) % ids.length];
                        try (PreparedStatement s = c.prepareStatement("UPDATE users SET name = name WHERE id = ?")) {
                            s.setLong(1, id);
                            s.executeUpdate();
                        }
                        c.commit();
                    }
                } catch (Exception e) {
                    errors.incrementAndGet();
                    e.printStackTrace();
                }
            }));
        }
        for (Future<?> f : done) f.get();
        pool.shutdown();
        if (errors.get() != 0) throw new AssertionError(errors.get() + " threads failed");
        // setFetchSize in a transaction (issue 19): the driver executes the portal 3 rows at a
        // time; the proxy pages a read merged across shards from cursors it declares on them.
        try (Connection c = DriverManager.getConnection(url, "app", "app-secret")) {
            List<Long> all = new ArrayList<>();
            try (Statement st = c.createStatement();
                 ResultSet r = st.executeQuery("SELECT id FROM users ORDER BY id DESC")) {
                while (r.next()) all.add(r.getLong(1));
            }
            c.setAutoCommit(false);
            for (int round = 0; round < 2; round++) {
                try (PreparedStatement s = c.prepareStatement("SELECT id, name FROM users WHERE id > ? ORDER BY id DESC")) {
                    s.setFetchSize(3);
                    s.setLong(1, 0);
                    List<Long> got = new ArrayList<>();
                    try (ResultSet r = s.executeQuery()) {
                        while (r.next()) {
                            got.add(r.getLong(1));
                            if (r.getString(2) == null) throw new AssertionError("fetchSize name");
                        }
                    }
                    if (!got.equals(all)) throw new AssertionError("fetchSize rows " + got + " vs " + all);
                }
            }
            c.commit();
        }
        System.out.println("jdbc checks passed");
    }
}
