#!/usr/bin/env python3
"""Which B-trees a store's writes go to: WAL frames and checkpoint copies per delivery.

    strace -f -y -e trace=pwrite64 -e signal=none -s 8 -x -o trace.log \
        entsync serve --db store.db ...          # under load, then stop it
    python3 scripts/wal_frames.py trace.log store.db [SEQ_BEFORE]

Every WAL frame is written as a 24-byte header (page number, then the database size
for a commit frame) and the page; checkpoint copies are page-sized writes to the
database file at (page - 1) * page size. Page numbers are mapped to tables and indexes
with SQLite's `dbstat`. SEQ_BEFORE: the highest delivery seq before the traced run, so
that "per delivery" counts only the deliveries that run stored.
"""
import collections
import re
import sqlite3
import sys

PWRITE = re.compile(
    r'pwrite64\(\d+<([^>]+)>, "((?:\\x[0-9a-f]{2}|[^"\\]|\\.)*)"(?:\.\.\.)?, (\d+), (\d+)\)'
)


def main(log, db, seq_before=0):
    conn = sqlite3.connect(db)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    wal, copies = collections.Counter(), collections.Counter()
    commits = 0
    for line in open(log, errors="replace"):
        m = PWRITE.search(line)
        if not m:
            continue
        path, data, n, off = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
        raw = data.encode("latin1").decode("unicode_escape").encode("latin1")
        if path.endswith("-wal") and n == 24 and len(raw) >= 8:
            wal[int.from_bytes(raw[0:4], "big")] += 1
            commits += int.from_bytes(raw[4:8], "big") != 0
        elif path == db or path.endswith("/" + db.split("/")[-1]):
            if n == page_size:
                copies[off // page_size + 1] += 1
    owner = dict(conn.execute("SELECT pageno, name FROM dbstat"))
    stored = conn.execute("SELECT COUNT(*) FROM deliveries WHERE seq > ?", (seq_before,)).fetchone()[0]

    def by_tree(counter):
        trees = collections.Counter()
        for page, k in counter.items():
            trees[owner.get(page, "(freed)")] += k
        return trees

    w, c = by_tree(wal), by_tree(copies)
    frames = sum(wal.values())
    print(f"{stored} deliveries stored, {commits} commits, {frames} WAL frames "
          f"({frames / max(stored, 1):.2f} per delivery, {frames / max(commits, 1):.1f} per commit), "
          f"{sum(copies.values())} pages copied by checkpoints")
    print(f"{'b-tree':30} {'frames/delivery':>16} {'copies/delivery':>16}")
    for name in sorted(set(w) | set(c), key=lambda t: -(w[t] + c[t])):
        print(f"{name:30} {w[name] / max(stored, 1):16.2f} {c[name] / max(stored, 1):16.2f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
