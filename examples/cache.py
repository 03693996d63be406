"""A record cache, as a Python service keeps one: part 4 of the demo.

cache.py RECORDS LOOKUPS builds RECORDS text records of about 1 KB in a
dict, then serves LOOKUPS random lookups from the first tenth of the keys
(the hot set; the other nine tenths are kept but not read), checksumming
every record it serves, twice: the first round is the program settling
in, the second its steady state. It prints one line of key=value pairs:
the build time and the time of each round, a checksum of everything served, the process's resident
memory now and at its peak (VmRSS, VmHWM), and the hugepage share of its
anonymous memory (AnonHugePages over Anonymous, from smaps_rollup). The
program knows nothing of libexch; the demo runs it with and without the
preload.
"""
import random
import sys
import time
import zlib

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo "
         "lima mike november oscar papa quebec romeo sierra tango uniform "
         "victor whiskey xray yankee zulu").split()


def proc_kb(path, field):
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    records, lookups = int(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(1)
    lines = [" ".join(rng.choice(WORDS) for _ in range(170)).encode()
             for _ in range(997)]
    t0 = time.perf_counter()
    cache = {}
    for i in range(records):
        cache[i] = b"%d:" % i + lines[i % 997]
    t1 = time.perf_counter()
    hot = records // 10
    crc = 0
    for _ in range(lookups):
        crc = zlib.crc32(cache[rng.randrange(hot)], crc)
    t2 = time.perf_counter()
    for _ in range(lookups):
        crc = zlib.crc32(cache[rng.randrange(hot)], crc)
    t3 = time.perf_counter()
    anon = proc_kb("/proc/self/smaps_rollup", "Anonymous")
    huge = proc_kb("/proc/self/smaps_rollup", "AnonHugePages")
    print("build_s=%.3f lookup1_s=%.3f lookup2_s=%.3f crc=%08x rss_kb=%d hwm_kb=%d "
          "anon_kb=%d huge_kb=%d"
          % (t1 - t0, t2 - t1, t3 - t2, crc, proc_kb("/proc/self/status", "VmRSS"),
             proc_kb("/proc/self/status", "VmHWM"), anon, huge))


main()
