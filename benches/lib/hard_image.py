#!/usr/bin/env python3
"""Writes the `hard` benchmark image: a sparse raw disk that looks more like
a used guest disk than the `simple` one (benches/lib/source_image.sh).

    hard_image.py PATH SIZE_BYTES [SEED]

Extents alternate between holes and allocated runs, both of sizes drawn
log-uniformly between 4 KiB and 32 MiB and rounded down to 4 KiB, so that
about half of the disk is holes and small runs are as common as large
ones (a 4 GiB image has about 560 allocated runs). Each allocated run is,
independently:

* 4 %:  zeros, written (allocated but zero: a zero-detecting importer
        leaves them out, a copying one writes them);
* 72 %: incompressible bytes (a seeded generator);
* 24 %: log-like text (syslog lines with varying times, hosts, pids,
        addresses and messages; deflate shrinks it to about a quarter).

The output depends only on SIZE_BYTES and SEED (default 20240601), on any
Python 3.9 or later. Prints one summary line on stderr.
"""

import math
import os
import random
import sys

KIB = 1024
MIB = 1024 * KIB
BLOCK = 4 * KIB
RUN_MIN = 4 * KIB
RUN_MAX = 32 * MIB
P_ZERO = 0.04
P_TEXT = 0.24
# Bytes written per call: bounds the script's memory.
PIECE = 4 * MIB


def log_uniform(r):
    """A length between RUN_MIN and RUN_MAX, log-uniform, 4 KiB aligned."""
    x = math.exp(r.uniform(math.log(RUN_MIN), math.log(RUN_MAX)))
    return max(RUN_MIN, int(x) // BLOCK * BLOCK)


def text_pool(r, size):
    """About `size` bytes of syslog-like lines."""
    hosts = ["web%02d" % i for i in range(12)] + ["db1", "db2", "cache", "gw"]
    progs = [
        ("sshd", "Accepted publickey for %s from %s port %d ssh2: ED25519 SHA256:%s"),
        ("sshd", "Connection closed by %s port %d [preauth]"),
        ("nginx", '%s - - "GET /api/v1/items/%d HTTP/1.1" %d %d "-" "curl/8.%d.0"'),
        ("kernel", "EXT4-fs (vda%d): mounted filesystem with ordered data mode"),
        ("systemd", "Started Session %d of user %s."),
        ("cron", "(%s) CMD (/usr/local/bin/backup --target %s --level %d)"),
        ("postgres", "LOG:  duration: %d.%03d ms  statement: SELECT * FROM t%d WHERE id = %d"),
    ]
    users = ["root", "alice", "bob", "deploy", "backup", "www-data"]
    out = []
    n = 0
    t = 1717200000
    while n < size:
        t += r.randrange(0, 3)
        prog, fmt = r.choice(progs)
        ip = "10.%d.%d.%d" % (r.randrange(256), r.randrange(256), r.randrange(256))
        if prog == "sshd" and fmt.startswith("Accepted"):
            msg = fmt % (r.choice(users), ip, r.randrange(1024, 65536),
                         "%032x" % r.getrandbits(128))
        elif prog == "sshd":
            msg = fmt % (ip, r.randrange(1024, 65536))
        elif prog == "nginx":
            msg = fmt % (ip, r.randrange(100000), r.choice([200, 200, 200, 304, 404, 500]),
                         r.randrange(100, 100000), r.randrange(10))
        elif prog == "kernel":
            msg = fmt % r.randrange(1, 4)
        elif prog == "systemd":
            msg = fmt % (r.randrange(100000), r.choice(users))
        elif prog == "cron":
            msg = fmt % (r.choice(users), r.choice(["s3", "nfs", "tape"]), r.randrange(3))
        else:
            msg = fmt % (r.randrange(1000), r.randrange(1000), r.randrange(64), r.randrange(10**6))
        line = "%s.%06dZ %s %s[%d]: %s\n" % (
            format_time(t), r.randrange(10**6), r.choice(hosts), prog, r.randrange(1, 40000), msg)
        b = line.encode()
        out.append(b)
        n += len(b)
    return b"".join(out)[:size]


def format_time(t):
    days, rem = divmod(t, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return "2024-06-%02dT%02d:%02d:%02d" % (1 + days % 28, h, m, s)


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    path, size = sys.argv[1], int(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) == 4 else 20240601
    r = random.Random(seed)
    # A separate stream for the bytes, so run sizes do not depend on them.
    noise = random.Random(seed + 1)
    pool = text_pool(random.Random(seed + 2), 8 * MIB)
    zeros = bytes(PIECE)
    counts = {"zero": 0, "noise": 0, "text": 0}
    data = {"zero": 0, "noise": 0, "text": 0}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        off = 0
        # Start with a hole or a run, as the seed says.
        allocated = r.random() < 0.5
        while off < size:
            length = min(log_uniform(r), size - off)
            if allocated:
                u = r.random()
                kind = "zero" if u < P_ZERO else "text" if u < P_ZERO + P_TEXT else "noise"
                counts[kind] += 1
                data[kind] += length
                start = r.randrange(len(pool)) if kind == "text" else 0
                done = 0
                while done < length:
                    n = min(PIECE, length - done)
                    if kind == "zero":
                        buf = zeros[:n]
                    elif kind == "noise":
                        buf = noise.randbytes(n)
                    else:
                        p = (start + done) % len(pool)
                        buf = (pool[p:] + pool)[:n] if p + n > len(pool) else pool[p:p + n]
                    os.pwrite(fd, buf, off + done)
                    done += n
            off += length
            allocated = not allocated
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    runs = sum(counts.values())
    alloc = sum(data.values())
    print(
        "hard image: %d MiB virtual, %d runs, %d MiB allocated (%.0f%%): "
        "%d noise runs %d MiB, %d text runs %d MiB, %d zero runs %d MiB"
        % (size // MIB, runs, alloc // MIB, 100.0 * alloc / max(size, 1),
           counts["noise"], data["noise"] // MIB, counts["text"], data["text"] // MIB,
           counts["zero"], data["zero"] // MIB),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
