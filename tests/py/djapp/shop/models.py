from django.db import models


class Order(models.Model):
    """Sharded by user_id in the test's shard map (`shop_order: { key: user_id, ... }`)."""

    id = models.BigIntegerField(primary_key=True)
    user_id = models.BigIntegerField()
    note = models.TextField(default="")
