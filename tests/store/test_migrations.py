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
