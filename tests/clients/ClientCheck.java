// pgjdbc against the iasql server, driven by tests/test_clients.py, run in single-file
// source mode: java -cp /usr/share/java/postgresql.jar ClientCheck.java USER PASSWORD URL...
// Prints one JSON object per JDBC URL, one per line.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.SQLWarning;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

public class ClientCheck {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[0]);
        props.setProperty("password", args[1]);
        for (int i = 2; i < args.length; i++) {
            System.out.println(check(args[i], props));
        }
    }

    static String check(String url, Properties props) throws SQLException {
        Connection conn;
        try {
            conn = DriverManager.getConnection(url, props);
        } catch (SQLException e) {
            return "{\"connect_error\": " + str(e.getSQLState()) + ", \"message\": " + str(e.getMessage()) + "}";
        }
        StringBuilder out = new StringBuilder("{");
        try (conn) {
            conn.setAutoCommit(true);
            // an iasql function, with a parameter
            List<String> names = new ArrayList<>();
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT module_name FROM iasql_modules_list() WHERE module_name = ?")) {
                ps.setString(1, "aws_account");
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        names.add(str(rs.getString(1)));
                    }
                }
            }
            out.append("\"function_rows\": ").append(names);
            // one prepared statement run 10 times: pgjdbc switches to a named server-side
            // statement at the 5th (prepareThreshold)
            List<String> runs = new ArrayList<>();
            boolean serverPrepared;
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT module_name, ?::int AS n FROM iasql_modules_list() WHERE module_name = ?")) {
                for (int i = 0; i < 10; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, i % 2 == 1 ? "aws_sqs" : "aws_s3");
                    List<String> rows = new ArrayList<>();
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            rows.add("[" + str(rs.getString(1)) + ", " + rs.getInt(2) + "]");
                        }
                    }
                    runs.add(rows.toString());
                }
                serverPrepared = ps.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare();
            }
            out.append(", \"prepared\": ").append(runs);
            out.append(", \"server_prepared\": ").append(serverPrepared);
            // a notice
            List<String> notices = new ArrayList<>();
            try (Statement st = conn.createStatement()) {
                st.execute("DO $$BEGIN RAISE NOTICE 'hello from plpgsql'; END$$");
                for (SQLWarning w = st.getWarnings(); w != null; w = w.getNextWarning()) {
                    notices.add(str(w.getMessage()));
                }
            }
            out.append(", \"notices\": ").append(notices);
            // errors: the engine's (a parameter through the extended protocol), Postgres's own
            List<String> errors = new ArrayList<>();
            try (PreparedStatement ps = conn.prepareStatement("SELECT * FROM iasql_install(?)")) {
                ps.setString(1, "no_such_module");
                ps.executeQuery().close();
                errors.add("null");
            } catch (SQLException e) {
                errors.add(str(e.getSQLState()));
            }
            try (Statement st = conn.createStatement()) {
                st.executeQuery("SELECT 1/0").close();
                errors.add("null");
            } catch (SQLException e) {
                errors.add(str(e.getSQLState()));
            }
            out.append(", \"errors\": ").append(errors);
            try (PreparedStatement ps = conn.prepareStatement("SELECT ?::int + 1")) {
                ps.setInt(1, 41);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    out.append(", \"after_errors\": ").append(rs.getInt(1));
                }
            }
        }
        return out.append("}").toString();
    }

    static String str(String s) {
        if (s == null) {
            return "null";
        }
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c < 0x20) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.append('"').toString();
    }
}
