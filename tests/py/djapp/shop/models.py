from django.db import models


class Order(models.Model):
    """Sharded by user_id in the test's shard map (`shop_order: { key: user_id, ... }`)."""

    id = models.BigIntegerField(primary_key=True)
    user_id = models.BigIntegerField()
    note = models.TextField(default="")


class Ticket(models.Model):
    """An auto-increment id, sharded by user_id (`shop_ticket: { key: user_id, ... }`): the
    proxy gives the ids, unique across shards (issue 20)."""

    user_id = models.BigIntegerField()
    note = models.TextField(default="")


class Account(models.Model):
    """Sharded by its own auto-increment id (`shop_account: { key: id, ... }`): the proxy
    assigns the id before it routes the row."""

    name = models.TextField(default="")
