"""Known data for a Redis server, over its unix socket: load it, check it.

redis_data.py SOCKET load N      sets k:0 .. k:N-1 to values made from the
                                 key (1-2 KB of text each), and h:0 .. h:N/10
                                 to hashes of 8 fields
redis_data.py SOCKET verify N    reads them all back; exits 1, saying which
                                 key, at the first value that differs

Only the standard library: RESP is written and parsed here, pipelined in
batches.
"""
import socket
import sys

BATCH = 1000
WORDS = b"alpha bravo charlie delta echo foxtrot golf hotel india juliet ".split()


def value(i):
    n = 100 + i % 100
    return b"%d:" % i + b" ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(n))


def command(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Reader:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def _line(self):
        while b"\r\n" not in self.buf:
            self._more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _more(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("server closed the connection")
        self.buf += chunk

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":"):
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._more()
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise RuntimeError("unexpected reply %r" % line)


def batches(n, make):
    for start in range(0, n, BATCH):
        yield [make(i) for i in range(start, min(n, start + BATCH))]


def main():
    path, what, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    rd = Reader(sock)
    fields = lambda i: [x for f in range(8) for x in (b"f%d" % f, b"%d.%d" % (i, f))]
    if what == "load":
        for cmds in batches(n, lambda i: command(b"SET", b"k:%d" % i, value(i))):
            sock.sendall(b"".join(cmds))
            for _ in cmds:
                rd.reply()
        for cmds in batches(n // 10, lambda i: command(b"HSET", b"h:%d" % i, *fields(i))):
            sock.sendall(b"".join(cmds))
            for _ in cmds:
                rd.reply()
        return 0
    for cmds in batches(n, lambda i: (i, command(b"GET", b"k:%d" % i))):
        sock.sendall(b"".join(c for _, c in cmds))
        for i, _ in cmds:
            got = rd.reply()
            if got != value(i):
                print("redis_data: k:%d differs: %r" % (i, (got or b"")[:40]))
                return 1
    for cmds in batches(n // 10, lambda i: (i, command(b"HGETALL", b"h:%d" % i))):
        sock.sendall(b"".join(c for _, c in cmds))
        for i, _ in cmds:
            got = rd.reply()
            pairs = dict(zip(got[0::2], got[1::2])) if got else {}
            want = dict(zip(fields(i)[0::2], fields(i)[1::2]))
            if pairs != want:
                print("redis_data: h:%d differs" % i)
                return 1
    print("redis_data: %d keys and %d hashes read back intact" % (n, n // 10))
    return 0


sys.exit(main())
