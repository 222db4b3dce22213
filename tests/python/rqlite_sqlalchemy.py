"""SQLAlchemy with the sqlalchemy-rqlite dialect (both from PyPI) against a paxosdb
node's rqlite-compatible HTTP API, unchanged: create tables, and an ORM session
round-trip (insert with a relationship, query, update, delete).

Usage: rqlite_sqlalchemy.py HOST PORT. Exits non-zero on the first failed check. Run by
tests/e2e_sql_http.rs.
"""

import sys

from sqlalchemy import Float, ForeignKey, Integer, String, create_engine, func, inspect, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

host, port = sys.argv[1], int(sys.argv[2])
engine = create_engine(f"rqlite+pyrqlite://{host}:{port}/")


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    books: Mapped[list["Book"]] = relationship(
        back_populates="author", cascade="all, delete-orphan", order_by="Book.year"
    )


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    year: Mapped[int] = mapped_column(Integer)
    rating: Mapped[float] = mapped_column(Float)
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


Base.metadata.create_all(engine)
assert set(inspect(engine).get_table_names()) >= {"authors", "books"}

with Session(engine) as s:
    le_guin = Author(
        name="Ursula K. Le Guin",
        books=[
            Book(title="The Dispossessed", year=1974, rating=4.5),
            Book(title="A Wizard of Earthsea", year=1968, rating=4.0),
        ],
    )
    s.add_all([le_guin, Author(name="Stanisław Lem", books=[Book(title="Solaris", year=1961, rating=4.25)])])
    s.commit()
    assert le_guin.id is not None

with Session(engine) as s:
    a = s.scalars(select(Author).where(Author.name == "Ursula K. Le Guin")).one()
    assert [b.title for b in a.books] == ["A Wizard of Earthsea", "The Dispossessed"], a.books
    assert a.books[1].rating == 4.5
    a.books[1].rating = 5.0
    s.commit()

with Session(engine) as s:
    best = s.scalars(select(Book).order_by(Book.rating.desc())).first()
    assert (best.title, best.rating, best.author.name) == ("The Dispossessed", 5.0, "Ursula K. Le Guin")
    n = s.scalar(select(func.count()).select_from(Book).where(Book.year < 1970))
    assert n == 2, n
    s.delete(s.scalars(select(Author).where(Author.name.like("Stan%"))).one())
    s.commit()

with Session(engine) as s:
    assert s.scalar(select(func.count()).select_from(Book)) == 2
    assert [a.name for a in s.scalars(select(Author))] == ["Ursula K. Le Guin"]

print("sqlalchemy-rqlite: ok")
