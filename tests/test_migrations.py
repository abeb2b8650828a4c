"""The SQLAlchemy tables and the Alembic migrations describe the same schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from reelgen.store.database import current_revision, head_revision, make_engine, upgrade
from reelgen.store.schema import metadata


def test_migrations_match_the_schema(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == [], diff
    finally:
        engine.dispose()


def test_downgrade_to_the_first_revision_and_back(database_url: str) -> None:
    from alembic import command

    from reelgen.store.database import _alembic_config

    engine = make_engine(database_url)
    try:
        upgrade(engine)
        with engine.connect() as conn:
            command.downgrade(_alembic_config(conn), "0001")
            conn.commit()
        assert current_revision(engine) == "0001"
        upgrade(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
