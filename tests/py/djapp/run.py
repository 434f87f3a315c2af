"""Django through the proxy (issue 16): `migrate` (DDL on every shard, the migration
history on the default shard), then the ORM: create on every shard, atomic() with a nested
atomic() that fails, filters by key, a merged count, and update/delete by key.

usage: run.py HOST PORT USER_ID[,USER_ID...]   (one user id per shard)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
host, port, id_list = sys.argv[1], sys.argv[2], sys.argv[3]
uids = [int(x) for x in id_list.split(",")]

import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["shop"],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "app",
            "USER": "app",
            "PASSWORD": "app-secret",
            "HOST": host,
            "PORT": port,
        }
    },
    USE_TZ=True,
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
)
django.setup()

from django.core.management import call_command
from django.db import IntegrityError, transaction

call_command("migrate", verbosity=0)
from shop.models import Order


def check(ok, what):
    if not ok:
        raise AssertionError(what)


for n, u in enumerate(uids):
    Order.objects.create(id=n + 1, user_id=u, note="new")
with transaction.atomic():
    Order.objects.filter(user_id=uids[0]).update(note="outer")
    try:
        with transaction.atomic():
            Order.objects.filter(user_id=uids[1]).update(note="inner")
            Order.objects.create(id=2, user_id=uids[1], note="duplicate")
    except IntegrityError:
        pass
    Order.objects.filter(user_id=uids[2]).update(note="outer")
notes = {o.user_id: o.note for o in Order.objects.all()}
check(notes == {uids[0]: "outer", uids[1]: "new", uids[2]: "outer"}, f"notes {notes}")
check(Order.objects.count() == len(uids), "count")
for u in uids:
    check(list(Order.objects.filter(user_id=u).values_list("note", flat=True)) != [], f"filter {u}")
Order.objects.filter(user_id=uids[1]).delete()
check(Order.objects.count() == len(uids) - 1, "delete")

# Issue 20: auto-increment ids given by the proxy, unique across shards, returned to the
# objects by bulk_create (one INSERT … RETURNING in a transaction, rows on every shard).
from shop.models import Account, Ticket

tickets = [Ticket(user_id=uids[i % len(uids)], note=f"t{i}") for i in range(1000)]
Ticket.objects.bulk_create(tickets)
ids = [t.id for t in tickets]
check(None not in ids and len(set(ids)) == 1000, "ticket ids set and unique")
check(sorted(Ticket.objects.values_list("id", flat=True)) == sorted(ids), "ticket ids stored")
# Each object got its own row's id (RETURNING rows come back in the objects' order).
for t in tickets[::37]:
    check(Ticket.objects.get(user_id=t.user_id, id=t.id).note == t.note, f"ticket {t.id} paired")
accounts = Account.objects.bulk_create([Account(name=f"a{i}") for i in range(1000)])
aids = [a.id for a in accounts]
check(None not in aids and len(set(aids)) == 1000, "account ids set and unique")
for a in accounts[::37]:
    check(Account.objects.get(id=a.id).name == a.name, f"account {a.id} paired")
one = Account.objects.create(name="single")
check(one.id not in aids and Account.objects.get(id=one.id).name == "single", "create + get by id")
check(Account.objects.count() == 1001, "accounts counted")
# Issue 19: .iterator() reads through a server-side cursor (psycopg 3: DECLARE … WITH HOLD
# under autocommit, a plain cursor inside atomic()), merged across shards by the proxy.
it = [a.id for a in Account.objects.order_by("-id").iterator(chunk_size=100)]
check(len(it) == 1001 and it == sorted(it, reverse=True), "iterator() WITH HOLD, sorted")
with transaction.atomic():
    names = [a.name for a in Account.objects.filter(name__startswith="a").order_by("name", "id").iterator(chunk_size=333)]
check(len(names) == 1000 and names == sorted(names), "iterator() inside atomic()")
print("django checks passed")
