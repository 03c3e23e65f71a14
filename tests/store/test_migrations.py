"""The Alembic migrations build exactly the schema the models describe, on both backends."""

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from callwarden.store.db import make_engine
from callwarden.store.migrate import alembic_config, current_revision, head_revision
from callwarden.store.models import Base


def test_migrated_schema_matches_the_models(store_url):
    engine = make_engine(store_url)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == []


def test_downgrade_to_nothing_and_up_again(store_url):
    engine = make_engine(store_url)
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    for target in ("base", "head"):
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if target == "base" else command.upgrade)(cfg, target)
    assert current_revision(engine) == head_revision()


def test_0005_adds_the_node_column_and_keeps_older_calls(store_url):
    """Upgrading a store with calls in it: they keep node NULL (unknown); down and up again."""
    from sqlalchemy import inspect, text

    engine = make_engine(store_url)
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))

    def migrate(target: str, up: bool) -> None:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.upgrade if up else command.downgrade)(cfg, target)

    def calls_schema() -> tuple[set[str], set[str]]:
        insp = inspect(engine)
        return ({c["name"] for c in insp.get_columns("calls")},
                {i["name"] for i in insp.get_indexes("calls")})

    migrate("0004", up=False)
    columns, indexes = calls_schema()
    assert "node" not in columns and "ix_calls_open" not in indexes
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO calls (call_id, direction, pbx, pbx_call_id, caller_hidden, attempted_at, "
            "decision, reasons, enforced, recording_id) VALUES ('c1', 'outbound', 'freeswitch', "
            "'u1', false, '2026-03-02 02:00:00', 'allow', '', true, 1)"))
    migrate("0005", up=True)
    assert current_revision(engine) == "0005"
    columns, indexes = calls_schema()
    assert "node" in columns and "ix_calls_open" in indexes
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pbx_call_id, node FROM calls")).all() == [("u1", None)]
    migrate("0004", up=False)
    columns, indexes = calls_schema()
    assert "node" not in columns and "ix_calls_open" not in indexes
    with engine.connect() as conn:  # the downgrade kept the row
        assert conn.execute(text("SELECT pbx_call_id FROM calls")).scalars().all() == ["u1"]
    migrate("head", up=True)
    assert current_revision(engine) == head_revision() and "node" in calls_schema()[0]
    engine.dispose()
