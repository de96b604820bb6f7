"""configs keep their pack key: which queued configs' runs may train in one pack

Revision ID: 0005
Revises: 0004

- `configs.pack_key` (String(32), nullable, indexed): the content key of a config's training
  settings without its learning rate and epochs (app/packing.py); the claim packs runs of one
  pack key, across configs and sweeps. Configs of queued sweeps get theirs here; external ones
  keep NULL (their runs are never claimed).

Only a column and an index are added, so both databases do it in place (SQLite's ADD COLUMN keeps
the tables and their triggers from 0002). The key is computed here as app.packing computed it at
this revision (a migration never imports the application); tests/integration/test_migrations.py
checks that the two agree.
"""

import copy
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 1000


def pack_key_of(train: dict[str, Any]) -> str:
    shared = copy.deepcopy(train)
    shared.pop("epochs", None)
    if isinstance(shared.get("optimizer"), dict):
        shared["optimizer"].pop("learning_rate", None)
    return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:16]


def upgrade() -> None:
    op.add_column("configs", sa.Column("pack_key", sa.String(length=32), nullable=True))
    op.create_index("ix_configs_pack_key", "configs", ["pack_key"])
    conn = op.get_bind()
    configs = sa.table("configs", sa.column("id", sa.Integer), sa.column("sweep_id", sa.Integer),
                       sa.column("train", sa.JSON), sa.column("pack_key", sa.String))
    sweeps = sa.table("sweeps", sa.column("id", sa.Integer), sa.column("kind", sa.String))
    queued = (sa.select(configs.c.id, configs.c.train)
              .where(configs.c.sweep_id.in_(sa.select(sweeps.c.id).where(sweeps.c.kind == "queued")))
              .order_by(configs.c.id))
    last = 0
    while True:
        rows = conn.execute(queued.where(configs.c.id > last).limit(BATCH)).all()
        if not rows:
            break
        keys = [{"config_id": r.id, "key": pack_key_of(r.train)} for r in rows if isinstance(r.train, dict)]
        if keys:
            conn.execute(configs.update().where(configs.c.id == sa.bindparam("config_id"))
                         .values(pack_key=sa.bindparam("key")), keys)
        last = rows[-1].id


def downgrade() -> None:
    # In place on both (SQLite 3.35+ drops a column itself): rebuilding `configs` on SQLite with
    # foreign keys on would delete every run of every config (ON DELETE CASCADE).
    op.drop_index("ix_configs_pack_key", table_name="configs")
    op.drop_column("configs", "pack_key")
