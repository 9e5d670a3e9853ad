"""service owners (提供单位): only the department owning a service publishes its items and decides requests

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

The rule for existing rows:
- the four built-in services get the departments of the seeds: credit 市发改委, golden-tax 市税务局,
  market 市市场监管局, treasury 市财政局 (a deployment whose departments are named otherwise hands them over
  with `msjx-gateway upstreams owner SERVICE DEPARTMENT`, which moves their requests along);
- an upstream registered earlier gets NO owner: nothing recorded says whose data it is, and guessing from who
  published items over it would hand it to exactly the department this revision stops. Until an admin names
  one, nobody publishes over it or decides its requests (409 `service_unowned`);
- catalog items keep the department that published them. An item whose publisher is not the service's owner
  is never approved by the 无条件 rule again: its requests wait for the owner;
- every draft, returned, submitted, approved or granted request of an owned service whose provider was not the
  owner is addressed to the owner instead, with a `reassign` event in its history. Grants stay as they are, but
  the migration names each live request the owner never decided, so the owner can review and revoke it.
"""

import logging
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")
ACTOR = "migration-0008"
BUILT_IN_OWNERS = {
    "credit": "市发改委",
    "golden-tax": "市税务局",
    "market": "市市场监管局",
    "treasury": "市财政局",
}
OPEN = ("draft", "returned", "submitted", "approved", "granted")
LIVE = ("approved", "granted")


def upgrade() -> None:
    owners = op.create_table(
        'service_owners',
        sa.Column('service', sa.String(length=64), nullable=False),
        sa.Column('department', sa.String(length=200), nullable=False),
        sa.Column('set_by', sa.String(length=64), nullable=False),
        sa.Column('set_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('service', name=op.f('pk_service_owners')),
    )
    with op.batch_alter_table('service_owners', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_service_owners_department'), ['department'], unique=False)

    now = datetime.now(UTC)
    op.bulk_insert(
        owners,
        [
            {"service": service, "department": department, "set_by": ACTOR, "set_at": now}
            for service, department in BUILT_IN_OWNERS.items()
        ],
    )
    bind = op.get_bind()
    for (name,) in bind.execute(sa.text("SELECT name FROM upstreams ORDER BY name")):
        log.warning(
            "upstream %s has no owner: nobody publishes over it or decides its requests until an admin runs"
            " `msjx-gateway upstreams owner %s DEPARTMENT`",
            name,
            name,
        )

    items = sa.table(
        'catalog_items',
        sa.column('item_id', sa.String),
        sa.column('provider', sa.String),
        sa.column('service', sa.String),
    )
    requests = sa.table(
        'sharing_requests',
        sa.column('request_id', sa.String),
        sa.column('item_id', sa.String),
        sa.column('provider_department', sa.String),
        sa.column('state', sa.String),
        sa.column('decided_by', sa.String),
        sa.column('updated_at', sa.DateTime(timezone=True)),
        sa.column('version', sa.Integer),
    )
    events = sa.table(
        'sharing_events',
        sa.column('request_id', sa.String),
        sa.column('at', sa.DateTime(timezone=True)),
        sa.column('actor', sa.String),
        sa.column('actor_department', sa.String),
        sa.column('action', sa.String),
        sa.column('from_state', sa.String),
        sa.column('to_state', sa.String),
        sa.column('changes', sa.JSON),
        sa.column('note', sa.JSON),
    )
    rows = bind.execute(
        sa.select(
            requests.c.request_id,
            requests.c.provider_department,
            requests.c.state,
            requests.c.decided_by,
            requests.c.version,
            items.c.provider,
            items.c.service,
        )
        .join(items, items.c.item_id == requests.c.item_id)
        .where(requests.c.state.in_(OPEN), items.c.service.in_(list(BUILT_IN_OWNERS)))
        .order_by(requests.c.request_id)
    ).all()
    for row in rows:
        owner = BUILT_IN_OWNERS[row.service]
        if row.state in LIVE and row.provider != owner:
            log.warning(
                "sharing request %s (%s) was approved by %s on an item %s published, not the owner %s: review it",
                row.request_id,
                row.state,
                row.decided_by,
                row.provider,
                owner,
            )
        if row.provider_department == owner:
            continue
        bind.execute(
            requests.update()
            .where(requests.c.request_id == row.request_id)
            .values(provider_department=owner, updated_at=now, version=row.version + 1)
        )
        bind.execute(
            events.insert().values(
                request_id=row.request_id,
                at=now,
                actor=ACTOR,
                actor_department=None,
                action="reassign",
                from_state=row.state,
                to_state=row.state,
                changes={"provider_department": {"before": row.provider_department, "after": owner}},
                note={"rule": f"{row.service} belongs to {owner}; its owner decides"},
            )
        )
        log.warning("sharing request %s now goes to %s, owner of %s", row.request_id, owner, row.service)


def downgrade() -> None:
    # Requests keep the owner they were addressed to; only the table of owners goes.
    with op.batch_alter_table('service_owners', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_service_owners_department'))
    op.drop_table('service_owners')
