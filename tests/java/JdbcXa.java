// pgjdbc's XA (PGXADataSource) through the proxy: a branch that writes on every shard is
// prepared, found by recover() on another XA connection and committed there; another is
// prepared and rolled back from a third; a one-phase commit works too.
//
// usage: java -cp postgresql.jar JdbcXa.java HOST PORT TAG ID[,ID...]   (TAG makes the xids unique)
import java.nio.charset.StandardCharsets;
import java.sql.*;
import java.util.*;
import javax.sql.XAConnection;
import javax.transaction.xa.*;
import org.postgresql.xa.PGXADataSource;

public class JdbcXa {
    record TestXid(int getFormatId, byte[] getGlobalTransactionId, byte[] getBranchQualifier) implements Xid {}

    static PGXADataSource ds(String host, int port) {
        PGXADataSource ds = new PGXADataSource();
        ds.setServerNames(new String[] {host});
        ds.setPortNumbers(new int[] {port});
        ds.setDatabaseName("app");
        ds.setUser("app");
        ds.setPassword("app-secret");
        ds.setSslMode("disable");
        return ds;
    }

    static Xid xid(String tag, String name) {
        return new TestXid(4242, (tag + "-" + name).getBytes(StandardCharsets.UTF_8), "b1".getBytes(StandardCharsets.UTF_8));
    }

    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    /// Runs the writes of branch `x` (name `name`) on `ids` and prepares it.
    static void prepare(PGXADataSource ds, Xid x, String name, long[] ids) throws Exception {
        XAConnection xc = ds.getXAConnection();
        XAResource xr = xc.getXAResource();
        xr.start(x, XAResource.TMNOFLAGS);
        try (PreparedStatement s = xc.getConnection().prepareStatement("INSERT INTO tpc_users (id, name) VALUES (?, ?)")) {
            for (long id : ids) {
                s.setLong(1, id);
                s.setString(2, name);
                check(s.executeUpdate() == 1, "insert " + id);
            }
        }
        xr.end(x, XAResource.TMSUCCESS);
        check(xr.prepare(x) == XAResource.XA_OK, "prepare");
        xc.close();
    }

    /// The xids recover() lists with `x`'s global id.
    static boolean listed(XAResource xr, Xid x) throws Exception {
        for (Xid r : xr.recover(XAResource.TMSTARTRSCAN | XAResource.TMENDRSCAN)) {
            if (Arrays.equals(r.getGlobalTransactionId(), x.getGlobalTransactionId())) return true;
        }
        return false;
    }

    static long count(PGXADataSource ds, String name) throws Exception {
        XAConnection xc = ds.getXAConnection();
        try (PreparedStatement s = xc.getConnection().prepareStatement("SELECT count(*) FROM tpc_users WHERE name = ?")) {
            s.setString(1, name);
            try (ResultSet r = s.executeQuery()) {
                r.next();
                return r.getLong(1);
            }
        } finally {
            xc.close();
        }
    }

    public static void main(String[] args) throws Exception {
        PGXADataSource ds = ds(args[0], Integer.parseInt(args[1]));
        String tag = args[2];
        long[] ids = Arrays.stream(args[3].split(",")).mapToLong(Long::parseLong).toArray();
        long[] first = Arrays.copyOfRange(ids, 0, ids.length / 2);
        long[] second = Arrays.copyOfRange(ids, ids.length / 2, ids.length);

        Xid a = xid(tag, "a");
        prepare(ds, a, "xa-a", first);
        check(count(ds, "xa-a") == 0, "invisible while prepared");
        XAConnection other = ds.getXAConnection();
        XAResource xr = other.getXAResource();
        check(listed(xr, a), "recover() lists the prepared branch");
        xr.commit(a, false);
        check(!listed(xr, a), "gone after commit");
        check(count(ds, "xa-a") == first.length, "committed on every shard");

        Xid b = xid(tag, "b");
        prepare(ds, b, "xa-b", second);
        xr.rollback(b);
        check(count(ds, "xa-b") == 0, "rolled back");
        try {
            xr.commit(b, false);
            throw new AssertionError("commit of a finished branch worked");
        } catch (XAException e) {
            check(e.errorCode == XAException.XAER_NOTA || e.errorCode == XAException.XAER_RMERR, "error code " + e.errorCode);
        }

        // One phase: no PREPARE at all.
        Xid c = xid(tag, "c");
        XAConnection xc = ds.getXAConnection();
        XAResource r = xc.getXAResource();
        r.start(c, XAResource.TMNOFLAGS);
        try (Statement s = xc.getConnection().createStatement()) {
            for (long id : second) s.executeUpdate("INSERT INTO tpc_users (id, name) VALUES (" + id + ", 'xa-c')");
        }
        r.end(c, XAResource.TMSUCCESS);
        r.commit(c, true);
        xc.close();
        check(count(ds, "xa-c") == second.length, "one-phase commit");
        other.close();
        System.out.println("jdbc xa done");
    }
}
