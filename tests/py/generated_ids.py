"""SQLAlchemy ORM through the proxy (issue 20): models with auto-increment primary keys on
sharded tables, add_all of 1,000 objects each (one table keyed by user_id, one keyed by the
generated id itself), ids unique and returned to the right objects.

SQLAlchemy's insertmanyvalues sends `INSERT … SELECT … FROM (VALUES …) AS imp_sen(…) ORDER
BY sen_counter RETURNING id` and pairs the returned ids with the objects by position.

usage: generated_ids.py HOST PORT
"""
import sys

from sqlalchemy import BigInteger, Text, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

host, port = sys.argv[1], sys.argv[2]


class Base(DeclarativeBase):
    pass


class Ticket(Base):
    __tablename__ = "sa_ticket"  # hashed on user_id
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger)
    note: Mapped[str] = mapped_column(Text)


class Account(Base):
    __tablename__ = "sa_account"  # hashed on id: the proxy assigns it before routing
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text)


def check(ok, what):
    if not ok:
        raise AssertionError(what)


engine = create_engine(f"postgresql+psycopg://app:app-secret@{host}:{port}/app")
Base.metadata.create_all(engine)
with Session(engine) as s:
    tickets = [Ticket(user_id=i % 7, note=f"n{i}") for i in range(1000)]
    accounts = [Account(name=f"a{i}") for i in range(1000)]
    s.add_all(tickets)
    s.add_all(accounts)
    s.commit()
    ids = [t.id for t in tickets]
    aids = [a.id for a in accounts]
    check(None not in ids and len(set(ids)) == 1000, "ticket ids set and unique")
    check(None not in aids and len(set(aids)) == 1000, "account ids set and unique")
    # Each object holds its own row's id.
    for t in tickets[::13]:
        got = s.execute(
            select(Ticket.note).where(Ticket.user_id == t.user_id, Ticket.id == t.id)
        ).scalar_one()
        check(got == t.note, f"ticket {t.id}: {got} != {t.note}")
    for a in accounts[::13]:
        check(s.get(Account, a.id).name == a.name, f"account {a.id}")
    check(s.scalar(select(func.count()).select_from(Ticket)) == 1000, "ticket count")
    # A single object, and an update through its id.
    one = Account(name="single")
    s.add(one)
    s.flush()
    check(one.id is not None and one.id not in aids, "single id")
    one.name = "renamed"
    s.commit()
    check(s.get(Account, one.id).name == "renamed", "update by generated key")
print("sqlalchemy generated ids passed")
