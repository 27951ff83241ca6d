import java.io.BufferedInputStream;
import java.io.ByteArrayOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Base64;
import java.util.Locale;
import java.util.logging.Logger;

/**
 * hello's WebSocket echo (the {@code WEBSOCKET} knob): a plain socket listener on the service's
 * port in front of the JDK's HttpServer, which cannot hand a connection over after a 101.
 *
 * <p>Each connection's first request head is read here. {@code GET /ws} with
 * {@code Upgrade: websocket} is answered 101 (the accept key is SHA-1 + Base64 from the JDK) and
 * then every text or binary frame is echoed back; the text {@code version?} is answered with
 * {@code version V}. Any other request is relayed byte for byte to the HttpServer on a private
 * port with {@code Connection: close}, so each relayed connection carries exactly one request and
 * a later upgrade always starts on a fresh connection that this listener reads.
 */
final class Front {
    private static final Logger LOG = Logger.getLogger("hello");
    private static final String GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    private static final int MAX_HEAD = 64 * 1024;
    private static final int MAX_FRAME = 1 << 20;

    private final int backendPort;
    private final String version;

    private Front(int backendPort, String version) {
        this.backendPort = backendPort;
        this.version = version;
    }

    /** Listens on bind:port, relaying to the HttpServer on 127.0.0.1:backendPort. */
    static void start(String bind, int port, int backendPort, String version) throws IOException {
        ServerSocket server = new ServerSocket();
        server.setReuseAddress(true);
        server.bind(new InetSocketAddress(bind, port), 128);
        Front front = new Front(backendPort, version);
        daemon("hello-front", () -> {
            while (true) {
                try {
                    Socket s = server.accept();
                    daemon("hello-front-conn", () -> front.serve(s));
                } catch (IOException e) {
                    LOG.warning("front: accept: " + e.getMessage());
                    return;
                }
            }
        });
        LOG.info("WEBSOCKET is set: /ws echoes on " + bind + ":" + port
                + ", other requests relayed to 127.0.0.1:" + backendPort);
    }

    private static void daemon(String name, Runnable r) {
        Thread t = new Thread(r, name);
        t.setDaemon(true);
        t.start();
    }

    private void serve(Socket s) {
        try (s) {
            s.setTcpNoDelay(true);
            InputStream in = new BufferedInputStream(s.getInputStream());
            byte[] head = readHead(in);
            if (head == null) {
                return;
            }
            String text = new String(head, StandardCharsets.ISO_8859_1);
            String[] lines = text.split("\r\n");
            String key = header(lines, "sec-websocket-key");
            String upgrade = header(lines, "upgrade");
            if (lines[0].startsWith("GET /ws ") && key != null && upgrade != null
                    && upgrade.toLowerCase(Locale.ROOT).contains("websocket")) {
                echo(s, in, key);
            } else {
                relay(s, in, lines);
            }
        } catch (IOException e) {
            // the peer went away: nothing to answer
        }
    }

    /** The request head up to and including its blank line; null at EOF before one. */
    private static byte[] readHead(InputStream in) throws IOException {
        ByteArrayOutputStream head = new ByteArrayOutputStream();
        int matched = 0;
        while (head.size() < MAX_HEAD) {
            int b = in.read();
            if (b < 0) {
                return null;
            }
            head.write(b);
            matched = (b == (matched % 2 == 0 ? '\r' : '\n')) ? matched + 1 : (b == '\r' ? 1 : 0);
            if (matched == 4) {
                return head.toByteArray();
            }
        }
        throw new IOException("request head too long");
    }

    private static String header(String[] lines, String name) {
        for (int i = 1; i < lines.length; i++) {
            int colon = lines[i].indexOf(':');
            if (colon > 0 && lines[i].substring(0, colon).trim().equalsIgnoreCase(name)) {
                return lines[i].substring(colon + 1).trim();
            }
        }
        return null;
    }

    /** One request to the HttpServer, with Connection: close; its answer back, then the end. */
    private void relay(Socket client, InputStream in, String[] lines) throws IOException {
        try (Socket backend = new Socket(InetAddress.getLoopbackAddress(), backendPort)) {
            backend.setTcpNoDelay(true);
            StringBuilder head = new StringBuilder(lines[0]).append("\r\n");
            for (int i = 1; i < lines.length; i++) {
                if (!lines[i].toLowerCase(Locale.ROOT).startsWith("connection:")) {
                    head.append(lines[i]).append("\r\n");
                }
            }
            head.append("Connection: close\r\n\r\n");
            OutputStream up = backend.getOutputStream();
            up.write(head.toString().getBytes(StandardCharsets.ISO_8859_1));
            up.flush();
            // The request body (if any) goes on aside; the answer comes back here.
            daemon("hello-front-body", () -> {
                try {
                    in.transferTo(up);
                } catch (IOException e) {
                    // either side closed
                }
            });
            // The answer says Connection: close too, so no client keeps this connection.
            InputStream down = new BufferedInputStream(backend.getInputStream());
            byte[] answer = readHead(down);
            if (answer == null) {
                return;
            }
            OutputStream out = client.getOutputStream();
            out.write(answer, 0, answer.length - 2);
            out.write("Connection: close\r\n\r\n".getBytes(StandardCharsets.ISO_8859_1));
            down.transferTo(out);
        }
    }

    /** The handshake, then frames echoed until a close frame or the end of the connection. */
    private void echo(Socket s, InputStream in, String key) throws IOException {
        OutputStream out = s.getOutputStream();
        String accept;
        try {
            byte[] sha1 = MessageDigest.getInstance("SHA-1")
                    .digest((key + GUID).getBytes(StandardCharsets.ISO_8859_1));
            accept = Base64.getEncoder().encodeToString(sha1);
        } catch (NoSuchAlgorithmException e) {
            throw new IOException(e);
        }
        out.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                + "Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + "\r\n\r\n")
                .getBytes(StandardCharsets.ISO_8859_1));
        out.flush();
        while (true) {
            int b0 = in.read();
            if (b0 < 0) {
                return;
            }
            int opcode = b0 & 0x0f;
            int b1 = readByte(in);
            long len = b1 & 0x7f;
            if (len == 126) {
                len = (readByte(in) << 8) | readByte(in);
            } else if (len == 127) {
                len = 0;
                for (int i = 0; i < 8; i++) {
                    len = (len << 8) | readByte(in);
                }
            }
            if (len > MAX_FRAME) {
                throw new IOException("frame too large");
            }
            byte[] mask = new byte[4];
            boolean masked = (b1 & 0x80) != 0;
            if (masked) {
                readFully(in, mask);
            }
            byte[] payload = new byte[(int) len];
            readFully(in, payload);
            if (masked) {
                for (int i = 0; i < payload.length; i++) {
                    payload[i] ^= mask[i % 4];
                }
            }
            switch (opcode) {
                case 0x8 -> { // close: answer with the same status, then end
                    send(out, 0x8, payload);
                    return;
                }
                case 0x9 -> send(out, 0xA, payload); // ping -> pong
                case 0xA -> { } // pong: nothing
                default -> {
                    String text = new String(payload, StandardCharsets.UTF_8);
                    if (opcode == 0x1 && text.equals("version?")) {
                        payload = ("version " + version).getBytes(StandardCharsets.UTF_8);
                    }
                    send(out, b0 & 0x8f, payload, true);
                }
            }
        }
    }

    private static void send(OutputStream out, int opcode, byte[] payload) throws IOException {
        send(out, 0x80 | opcode, payload, true);
    }

    /** A server frame (unmasked) whose first byte is b0. */
    private static void send(OutputStream out, int b0, byte[] payload, boolean flush) throws IOException {
        ByteArrayOutputStream frame = new ByteArrayOutputStream(payload.length + 10);
        frame.write(b0);
        if (payload.length < 126) {
            frame.write(payload.length);
        } else if (payload.length < 65536) {
            frame.write(126);
            frame.write(payload.length >> 8);
            frame.write(payload.length & 0xff);
        } else {
            frame.write(127);
            for (int i = 7; i >= 0; i--) {
                frame.write((int) ((long) payload.length >> (8 * i)) & 0xff);
            }
        }
        frame.write(payload);
        synchronized (out) {
            frame.writeTo(out);
            if (flush) {
                out.flush();
            }
        }
    }

    private static int readByte(InputStream in) throws IOException {
        int b = in.read();
        if (b < 0) {
            throw new EOFException();
        }
        return b;
    }

    private static void readFully(InputStream in, byte[] buf) throws IOException {
        int off = 0;
        while (off < buf.length) {
            int n = in.read(buf, off, buf.length - off);
            if (n < 0) {
                throw new EOFException();
            }
            off += n;
        }
    }
}
