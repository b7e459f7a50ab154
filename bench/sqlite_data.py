#!/usr/bin/env python3
"""Benchmark data: a SQLite database of realistic rows, and a ~1 % change.

  sqlite_data.py create DB SIZE_MIB [--three-indexes]
                                      # orders with customers, text, numbers, dates, an index
                                      # (or three: email, (customer, city), UNIQUE token)
  sqlite_data.py change DB [RANGES]   # update RANGES (100) random row ranges, ~1 % of pages

Deterministic (seeded), so every tool in a run sees the same bytes.
"""
import os
import random
import sqlite3
import sys

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu "
         "shipped pending cancelled returned priority express standard gift wrap fragile").split()
STATUSES = ["pending", "paid", "shipped", "delivered", "returned", "cancelled"]
CITIES = ["Lisbon", "Berlin", "Austin", "Osaka", "Lagos", "Lima", "Oslo", "Pune", "Quebec", "Perth"]


def row(rng, i):
    first = rng.choice(WORDS).title()
    last = rng.choice(WORDS).title() + rng.choice(WORDS)
    note = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30)))
    return (
        i,
        f"{first} {last}",
        f"{first.lower()}.{last.lower()}{rng.randint(1, 999)}@example.com",
        rng.choice(CITIES),
        rng.choice(STATUSES),
        round(rng.uniform(1, 5000), 2),
        rng.randint(1, 20),
        f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
        note,
        rng.randbytes(16).hex(),
    )


def create(path, size_mib, three_indexes=False):
    if os.path.exists(path):
        os.remove(path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA page_size=4096")
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("""CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, email TEXT, city TEXT,
                  status TEXT, amount REAL, quantity INTEGER, created_at TEXT, note TEXT, token TEXT)""")
    db.execute("CREATE INDEX orders_email ON orders(email)")
    if three_indexes:
        db.execute("CREATE INDEX orders_customer ON orders(customer, city)")
        db.execute("CREATE UNIQUE INDEX orders_token ON orders(token)")
    rng = random.Random(42)
    target = size_mib * 1024 * 1024
    i = 0
    while True:
        db.executemany("INSERT INTO orders VALUES (?,?,?,?,?,?,?,?,?,?)", [row(rng, i + k) for k in range(20000)])
        i += 20000
        db.commit()
        if os.path.getsize(path) >= target:
            break
    db.close()
    print(f"{path}: {os.path.getsize(path)} bytes, {i} rows")


def change(path, ranges=100):
    db = sqlite3.connect(path)
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    rows = db.execute("SELECT max(id) FROM orders").fetchone()[0]
    # ~1 % of pages, spread over `ranges` contiguous row ranges.
    per_page = max(1, rows // pages)
    span = max(1, (pages // 100) * per_page // ranges)
    rng = random.Random(7)
    for _ in range(ranges):
        start = rng.randint(0, rows - span)
        db.execute("UPDATE orders SET status = 'audited', amount = amount + 1 WHERE id BETWEEN ? AND ?",
                   (start, start + span))
    db.commit()
    db.close()
    print(f"{path}: updated {ranges} ranges of {span} rows")


if __name__ == "__main__":
    if sys.argv[1] == "create":
        create(sys.argv[2], int(sys.argv[3]), "--three-indexes" in sys.argv[4:])
    elif sys.argv[1] == "change":
        change(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 100)
    else:
        sys.exit(__doc__)
