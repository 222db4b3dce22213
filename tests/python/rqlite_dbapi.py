"""pyrqlite (rqlite's DB-API 2.0 client, from PyPI) against a paxosdb node's
rqlite-compatible HTTP API, unchanged: create a table, insert with parameters, select,
and a failed statement in a transaction rolling back the whole request.

Usage: rqlite_dbapi.py HOST PORT [USER PASSWORD]. Exits non-zero on the first failed
check. Run by tests/e2e_sql_http.rs.
"""

import sys

from pyrqlite import dbapi2

host, port = sys.argv[1], int(sys.argv[2])
auth = {"user": sys.argv[3], "password": sys.argv[4]} if len(sys.argv) > 4 else {}
conn = dbapi2.connect(host=host, port=port, **auth)
cur = conn.cursor()

cur.execute(
    "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
    " age INTEGER, score REAL, photo BLOB)"
)
cur.execute(
    "INSERT INTO people(name, age, score, photo) VALUES(?, ?, ?, ?)",
    ("fiona", 20, 1.5, b"\x00\x01\xff"),
)
assert cur.lastrowid == 1, cur.lastrowid
cur.execute(
    "INSERT INTO people(name, age, score) VALUES(:name, :age, :score)",
    {"name": "declan's", "age": 25, "score": 2.0},
)
assert cur.lastrowid == 2, cur.lastrowid

cur.execute("SELECT id, name, age, score, photo FROM people ORDER BY id")
rows = [tuple(r) for r in cur.fetchall()]
expected = [(1, "fiona", 20, 1.5, b"\x00\x01\xff"), (2, "declan's", 25, 2.0, None)]
assert rows == expected, rows
assert [d[0] for d in cur.description] == ["id", "name", "age", "score", "photo"]
assert isinstance(rows[1][3], float), rows  # REAL 2.0 stays a float

cur.execute("UPDATE people SET age = age + 1 WHERE age >= ?", (20,))
assert cur.rowcount == 2, cur.rowcount

# A failing statement raises.
try:
    cur.execute("INSERT INTO people(name) VALUES(?)", ("fiona",))
except dbapi2.Error as e:
    assert "UNIQUE" in str(e), e
else:
    raise AssertionError("a duplicate name was accepted")

# executemany sends one request with ?transaction: its second statement fails (duplicate
# name), so the first and third are rolled back with it.
cur.executemany(
    "INSERT INTO people(name, age) VALUES(?, ?)",
    [("ada", 36), ("fiona", 1), ("grace", 85)],
)
cur.execute("SELECT count(*) FROM people WHERE name IN ('ada', 'grace')")
assert cur.fetchone()[0] == 0, "a failed transaction left rows behind"
cur.execute("SELECT count(*) AS n FROM people")
assert cur.fetchone()["n"] == 2

# A transaction that succeeds applies every statement.
cur.executemany("INSERT INTO people(name, age) VALUES(?, ?)", [("ada", 36), ("grace", 85)])
assert cur.rowcount == 2, cur.rowcount
cur.execute("SELECT name FROM people WHERE age > ? ORDER BY name", (30,))
assert [r[0] for r in cur.fetchall()] == ["ada", "grace"]

# A stale read (rqlite's level=none) sees this node's applied state.
cur.execute("SELECT count(*) FROM people", consistency="none")
assert cur.fetchone()[0] == 4

conn.close()
print("pyrqlite: ok")
