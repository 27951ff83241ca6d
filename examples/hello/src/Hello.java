import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.Reader;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.SocketException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ThreadFactory;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.logging.FileHandler;
import java.util.logging.Level;
import java.util.logging.LogManager;
import java.util.logging.Logger;

/**
 * A tiny HTTP service used as the example deployable for shipjar.
 *
 * Configuration is read once at start from {@code $SHIPJAR_CONFIG_DIR} (or {@code ./config}):
 * {@code service.properties}, {@code database.properties} and optionally {@code logging.properties}.
 * Environment variables select the listen address and a few fault knobs used by shipjar's tests.
 */
public final class Hello {

    static {
        // Must run before anything touches java.util.logging; see QuietShutdownLogManager.
        if (System.getProperty("java.util.logging.manager") == null) {
            System.setProperty("java.util.logging.manager", QuietShutdownLogManager.class.getName());
        }
    }

    private static final Logger LOG = Logger.getLogger("hello");
    private static final int THREADS = 16;
    /** How long a graceful stop waits for in-flight requests, in seconds. */
    private static final int STOP_GRACE_S = 10;
    private static final long MAX_SLOW_MS = 600_000;
    private static final String TEXT = "text/plain; charset=utf-8";
    private static final String FORMAT_PROP = "java.util.logging.SimpleFormatter.format";

    private final Properties service;
    private final Properties database;
    private final String version;
    /** False until start-up is complete; drives /health. */
    private volatile boolean ready;
    /** When start-up completed (System.nanoTime), for UNHEALTHY_AFTER_S. */
    private volatile long readyAt;
    /** UNHEALTHY_AFTER_S: /health answers 500 from this many seconds after start-up (0: never). */
    private int unhealthyAfterS;
    /** UNHEALTHY_CHECKS: that many /health requests answer 500, then it is healthy again (0: all). */
    private int unhealthyChecks;
    private final AtomicInteger unhealthyAnswers = new AtomicInteger();
    /** ACCESS_LOG: log every request at INFO (what a busy access log looks like). */
    private boolean accessLog;
    private final AtomicBoolean answeredHealthy = new AtomicBoolean();

    private Hello(Properties service, Properties database) {
        this.service = service;
        this.database = database;
        this.version = service.getProperty("version", "unknown");
    }

    public static void main(String[] args) throws Exception {
        String dirEnv = System.getenv("SHIPJAR_CONFIG_DIR");
        Path configDir = Path.of(dirEnv != null && !dirEnv.isEmpty() ? dirEnv : "config");
        loadLoggingConfig(configDir);
        Hello app = new Hello(readProperties(configDir.resolve("service.properties")),
                readProperties(configDir.resolve("database.properties")));

        String bind = envOr("BIND", "127.0.0.1");
        int port = intEnv("PORT", 8080);
        int startupDelayMs = intEnv("STARTUP_DELAY_MS", 0);
        int crashAfterS = intEnv("CRASH_AFTER_S", 0);
        app.unhealthyAfterS = intEnv("UNHEALTHY_AFTER_S", 0);
        app.unhealthyChecks = intEnv("UNHEALTHY_CHECKS", 0);
        app.accessLog = flag("ACCESS_LOG");
        String ownLog = envOr("OWN_LOG_FILE", null);
        if (ownLog != null) {
            // The service's own log file, as a logback/log4j config would write it.
            FileHandler file = new FileHandler(ownLog, true);
            file.setFormatter(new java.util.logging.SimpleFormatter());
            Logger.getLogger("").addHandler(file);
        }
        LOG.info("starting hello version " + app.version + " on " + bind + ":" + port);

        if (flag("FAIL_ON_START")) {
            System.err.println("hello: FAIL_ON_START is set, exiting");
            System.exit(1);
        }
        if (flag("IGNORE_SIGTERM")) {
            // Replaces the JVM's own TERM handler, so shutdown hooks no longer run on SIGTERM.
            sun.misc.Signal.handle(new sun.misc.Signal("TERM"), s -> LOG.warning("ignoring SIGTERM"));
            LOG.warning("IGNORE_SIGTERM is set: only SIGKILL will stop this process");
        }
        app.run(bind, port, startupDelayMs, crashAfterS, flag("HANG_ON_START"));
    }

    private void run(String bind, int port, int startupDelayMs, int crashAfterS, boolean hang)
            throws IOException {
        ExecutorService pool = Executors.newFixedThreadPool(THREADS, threads("hello-http", false));
        ScheduledExecutorService timers = Executors.newSingleThreadScheduledExecutor(threads("hello-timer", true));
        HttpServer server;
        // WEBSOCKET: the HttpServer moves to a private port behind hello's own listener (Front).
        boolean websocket = flag("WEBSOCKET");
        try {
            server = HttpServer.create(websocket
                    ? new InetSocketAddress(InetAddress.getLoopbackAddress(), 0)
                    : new InetSocketAddress(bind, port), 0);
            if (websocket) {
                Front.start(bind, port, server.getAddress().getPort(), version);
            }
        } catch (SocketException | IllegalArgumentException e) { // port in use, bad BIND/PORT
            System.err.println("hello: cannot listen on " + bind + ":" + port + ": " + e.getMessage());
            System.exit(1);
            return;
        }
        server.createContext("/", this::handle);
        server.setExecutor(pool);
        server.start();
        Runtime.getRuntime().addShutdownHook(
                new Thread(() -> stop(server, pool, timers), "hello-shutdown"));
        // Log the real address: with PORT=0 the OS picks the port.
        InetSocketAddress addr = server.getAddress();
        LOG.info("listening on " + (websocket ? bind + ":" + port : addr.getHostString() + ":" + addr.getPort()));

        Runnable markReady = () -> {
            readyAt = System.nanoTime();
            ready = true;
            LOG.info("start-up complete, healthy");
            if (crashAfterS > 0) {
                timers.schedule(() -> {
                    System.err.println("hello: crashing on purpose (CRASH_AFTER_S=" + crashAfterS + ")");
                    Runtime.getRuntime().halt(3); // no shutdown hooks: simulates a hard crash
                }, crashAfterS, TimeUnit.SECONDS);
            }
        };
        if (hang) {
            LOG.warning("HANG_ON_START is set: start-up never completes, /health stays 503");
        } else if (startupDelayMs > 0) {
            LOG.info("STARTUP_DELAY_MS=" + startupDelayMs + ": /health returns 503 until then");
            timers.schedule(markReady, startupDelayMs, TimeUnit.MILLISECONDS);
        } else {
            markReady.run();
        }
    }

    /** Runs from the JVM shutdown hook (SIGTERM, SIGINT, System.exit). */
    private void stop(HttpServer server, ExecutorService pool, ScheduledExecutorService timers) {
        LOG.info("stopping: waiting up to " + STOP_GRACE_S + " s for in-flight requests");
        ready = false;
        timers.shutdownNow();
        // server.stop() closes the listening socket at once, then waits for exchanges in
        // progress, but on JDK 17 it waits the whole grace period even when nothing is in
        // flight (JDK-8304065, fixed in 21). So run it aside and wait on the pool instead:
        // every request (queued or running) is a pool task. The JVM exits once we return.
        Thread closer = new Thread(() -> server.stop(STOP_GRACE_S), "hello-http-stop");
        closer.setDaemon(true);
        closer.start();
        pool.shutdown();
        try {
            if (!pool.awaitTermination(STOP_GRACE_S, TimeUnit.SECONDS)) {
                LOG.warning("requests still running after " + STOP_GRACE_S + " s, abandoning them");
                pool.shutdownNow();
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        LOG.info("stopped");
    }

    private void handle(HttpExchange ex) throws IOException {
        long t0 = System.nanoTime();
        String method = ex.getRequestMethod();
        String path = ex.getRequestURI().getPath();
        int status = 500;
        try {
            status = route(ex, method, path);
        } catch (RuntimeException e) {
            LOG.log(Level.WARNING, "error handling " + method + " " + path, e);
            try {
                send(ex, 500, TEXT, "internal error\n");
            } catch (IOException | RuntimeException ignored) {
                // headers were probably already sent; nothing more we can do
            }
        } finally {
            ex.close();
        }
        int code = status;
        Level level = accessLog ? Level.INFO : Level.FINE;
        LOG.log(level, () -> method + " " + ex.getRequestURI() + " -> " + code + " ("
                + (System.nanoTime() - t0) / 1_000_000 + " ms)");
    }

    /** Dispatches one request and returns the status code it was answered with. */
    private int route(HttpExchange ex, String method, String path) throws IOException {
        boolean known = path.equals("/") || path.equals("/health") || path.equals("/version")
                || path.equals("/config") || path.equals("/slow") || path.equals("/headers")
                || path.equals("/events") || path.equals("/big");
        if (!known) {
            return send(ex, 404, TEXT, "not found\n");
        }
        if (!method.equals("GET")) {
            ex.getResponseHeaders().set("Allow", "GET");
            return send(ex, 405, TEXT, "method not allowed\n");
        }
        switch (path) {
            case "/":
                return send(ex, 200, TEXT, "hello from " + version + "\n");
            case "/health":
                return health(ex);
            case "/version": {
                Map<String, String> all = new TreeMap<>();
                for (String key : service.stringPropertyNames()) {
                    all.put(key, service.getProperty(key));
                }
                all.putIfAbsent("version", "unknown");
                return send(ex, 200, "application/json", toJson(all));
            }
            case "/config": {
                // Deliberately only url and user: the password must never leave the process.
                Map<String, String> shown = new TreeMap<>();
                shown.put("db_url", database.getProperty("url", ""));
                shown.put("db_user", database.getProperty("user", ""));
                return send(ex, 200, "application/json", toJson(shown));
            }
            case "/headers": {
                // The request's headers as the service got them (names in lower case,
                // the lines of a repeated header joined by ", "): what a proxy passed on.
                Map<String, String> seen = new TreeMap<>();
                for (Map.Entry<String, java.util.List<String>> e : ex.getRequestHeaders().entrySet()) {
                    seen.put(e.getKey().toLowerCase(Locale.ROOT), String.join(", ", e.getValue()));
                }
                return send(ex, 200, "application/json", toJson(seen));
            }
            case "/events":
                return events(ex);
            case "/big":
                return big(ex);
            default: // "/slow"
                return slow(ex);
        }
    }

    private int health(HttpExchange ex) throws IOException {
        if (!ready) {
            return send(ex, 503, TEXT, "starting\n");
        }
        if (unhealthyAfterS > 0
                && System.nanoTime() - readyAt >= TimeUnit.SECONDS.toNanos(unhealthyAfterS)
                && (unhealthyChecks == 0 || unhealthyAnswers.getAndIncrement() < unhealthyChecks)) {
            return send(ex, 500, TEXT, "unhealthy (UNHEALTHY_AFTER_S=" + unhealthyAfterS + ")\n");
        }
        if (answeredHealthy.compareAndSet(false, true)) {
            LOG.info("first healthy answer to /health");
        }
        return send(ex, 200, TEXT, "ok\n");
    }

    /** The value of query parameter {@code name}, or -1 when absent or not a number. */
    private static long query(HttpExchange ex, String name) {
        String query = ex.getRequestURI().getRawQuery();
        for (String pair : query == null ? new String[0] : query.split("&")) {
            if (pair.startsWith(name + "=")) {
                try {
                    return Long.parseLong(pair.substring(name.length() + 1));
                } catch (NumberFormatException e) {
                    return -1;
                }
            }
        }
        return -1;
    }

    /**
     * Server-sent events: {@code /events?n=N&ms=M} sends N events (0: until the client goes),
     * one every M ms, each flushed as it is written ({@code data: VERSION I}).
     */
    private int events(HttpExchange ex) throws IOException {
        long n = query(ex, "n");
        long ms = query(ex, "ms");
        if (n < 0 || ms < 0 || ms > MAX_SLOW_MS) {
            return send(ex, 400, TEXT, "usage: /events?n=N&ms=M (n 0: no end)\n");
        }
        ex.getResponseHeaders().set("Content-Type", "text/event-stream");
        ex.getResponseHeaders().set("Cache-Control", "no-cache");
        ex.sendResponseHeaders(200, 0); // chunked
        try (OutputStream out = ex.getResponseBody()) {
            for (long i = 1; n == 0 || i <= n; i++) {
                out.write(("id: " + i + "\ndata: " + version + " " + i + "\n\n")
                        .getBytes(StandardCharsets.UTF_8));
                out.flush();
                if (n == 0 || i < n) {
                    Thread.sleep(ms);
                }
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        return 200;
    }

    /** {@code /big?bytes=N[&chunked=1]}: N bytes of 'x', with a Content-Length or chunked. */
    private int big(HttpExchange ex) throws IOException {
        long n = query(ex, "bytes");
        if (n < 0 || n > 1L << 30) {
            return send(ex, 400, TEXT, "usage: /big?bytes=N[&chunked=1]\n");
        }
        ex.getResponseHeaders().set("Content-Type", "application/octet-stream");
        ex.sendResponseHeaders(200, query(ex, "chunked") == 1 ? 0 : (n == 0 ? -1 : n));
        byte[] block = new byte[8192];
        java.util.Arrays.fill(block, (byte) 'x');
        try (OutputStream out = ex.getResponseBody()) {
            for (long left = n; left > 0; left -= block.length) {
                out.write(block, 0, (int) Math.min(left, block.length));
            }
        }
        return 200;
    }

    private int slow(HttpExchange ex) throws IOException {
        long ms = -1;
        String query = ex.getRequestURI().getRawQuery();
        for (String pair : query == null ? new String[0] : query.split("&")) {
            if (pair.startsWith("ms=")) {
                try {
                    ms = Long.parseLong(pair.substring(3));
                } catch (NumberFormatException e) {
                    ms = -1;
                }
            }
        }
        if (ms < 0 || ms > MAX_SLOW_MS) {
            return send(ex, 400, TEXT,
                    "usage: /slow?ms=N with 0 <= N <= " + MAX_SLOW_MS + "\n");
        }
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return send(ex, 503, TEXT, "interrupted\n");
        }
        return send(ex, 200, TEXT, "slept " + ms + " ms\n");
    }

    private static int send(HttpExchange ex, int code, String type, String body) throws IOException {
        byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", type);
        ex.sendResponseHeaders(code, bytes.length);
        try (OutputStream out = ex.getResponseBody()) {
            out.write(bytes);
        }
        return code;
    }

    /** A flat JSON object of strings. */
    static String toJson(Map<String, String> map) {
        StringBuilder sb = new StringBuilder("{");
        for (Map.Entry<String, String> e : map.entrySet()) {
            if (sb.length() > 1) {
                sb.append(',');
            }
            quote(sb, e.getKey());
            sb.append(':');
            quote(sb, e.getValue());
        }
        return sb.append("}\n").toString();
    }

    private static void quote(StringBuilder sb, String s) {
        sb.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\\') {
                sb.append('\\').append(c);
            } else if (c < 0x20) {
                sb.append(String.format("\\u%04x", (int) c));
            } else {
                sb.append(c);
            }
        }
        sb.append('"');
    }

    /** Reads a properties file as UTF-8 (what shipjar's renderer writes); missing means empty. */
    private static Properties readProperties(Path file) throws IOException {
        Properties props = new Properties();
        try (Reader in = Files.newBufferedReader(file, StandardCharsets.UTF_8)) {
            props.load(in);
        } catch (NoSuchFileException e) {
            LOG.info(file + " not found, using no settings from it");
        }
        return props;
    }

    private static void loadLoggingConfig(Path configDir) throws IOException {
        boolean explicit = System.getProperty("java.util.logging.config.file") != null
                || System.getProperty("java.util.logging.config.class") != null;
        Path file = configDir.resolve("logging.properties");
        if (!explicit && Files.isRegularFile(file)) {
            try (InputStream in = Files.newInputStream(file)) {
                LogManager.getLogManager().readConfiguration(in);
            }
        } else if (!explicit && System.getProperty(FORMAT_PROP) == null) {
            // The JDK default puts every record on two lines; use one. (A system property wins
            // over logging.properties, so only set it when no logging config is in play.)
            System.setProperty(FORMAT_PROP, "%1$tF %1$tT.%1$tL %4$s [%3$s] %5$s%6$s%n");
        }
        QuietShutdownLogManager.freeze();
    }

    private static String envOr(String name, String fallback) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? fallback : v;
    }

    private static int intEnv(String name, int fallback) {
        String v = envOr(name, null);
        if (v == null) {
            return fallback;
        }
        try {
            int n = Integer.parseInt(v.trim());
            if (n >= 0) {
                return n;
            }
        } catch (NumberFormatException e) {
            // fall through
        }
        System.err.println("hello: " + name + " must be a non-negative integer, got '" + v + "'");
        System.exit(2);
        return fallback; // not reached
    }

    /** A knob is on when set to 1, true or yes. */
    private static boolean flag(String name) {
        String v = envOr(name, "").trim().toLowerCase(Locale.ROOT);
        return v.equals("1") || v.equals("true") || v.equals("yes");
    }

    private static ThreadFactory threads(String prefix, boolean daemon) {
        AtomicInteger n = new AtomicInteger();
        return r -> {
            Thread t = new Thread(r, prefix + "-" + n.incrementAndGet());
            t.setDaemon(daemon);
            return t;
        };
    }

    /**
     * The stock LogManager has its own shutdown hook that resets logging (removing all
     * handlers). It runs concurrently with ours, so "stopping"/"stopped" would often be lost.
     * This manager ignores reset() once start-up configuration is done. ConsoleHandler
     * flushes every record, so nothing is left buffered at exit.
     */
    public static final class QuietShutdownLogManager extends LogManager {
        private volatile boolean frozen;

        public QuietShutdownLogManager() {
        }

        @Override
        public void reset() {
            if (!frozen) {
                super.reset();
            }
        }

        static void freeze() {
            if (LogManager.getLogManager() instanceof QuietShutdownLogManager m) {
                m.frozen = true;
            }
        }
    }
}
