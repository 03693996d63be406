"""Known data for a memcached server, over TCP: load it, check it.

memcached_data.py PORT load N      stores k:0 .. k:N-1 (1-2 KB of text each)
memcached_data.py PORT verify N    reads them all back; exits 1, saying which
                                   key, at the first that is missing or differs

Only the standard library: the text protocol, pipelined in batches.
"""
import socket
import sys

BATCH = 500
WORDS = b"alpha bravo charlie delta echo foxtrot golf hotel india juliet ".split()


def value(i):
    n = 100 + i % 100
    return b"%d:" % i + b" ".join(WORDS[(i * 11 + k) % len(WORDS)] for k in range(n))


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("server closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


def main():
    port, what, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    c = Conn(port)
    for start in range(0, n, BATCH):
        keys = range(start, min(n, start + BATCH))
        if what == "load":
            c.sock.sendall(b"".join(b"set k:%d 0 0 %d\r\n%s\r\n" % (i, len(value(i)), value(i))
                                    for i in keys))
            for i in keys:
                if c.line() != b"STORED":
                    print("memcached_data: k:%d not stored" % i)
                    return 1
            continue
        c.sock.sendall(b"get " + b" ".join(b"k:%d" % i for i in keys) + b"\r\n")
        got = {}
        while True:
            line = c.line()
            if line == b"END":
                break
            _, key, _, size = line.split()
            got[key] = c.exact(int(size) + 2)[:-2]
        for i in keys:
            if got.get(b"k:%d" % i) != value(i):
                print("memcached_data: k:%d missing or different" % i)
                return 1
    if what == "verify":
        print("memcached_data: %d keys read back intact" % n)
    return 0


sys.exit(main())
