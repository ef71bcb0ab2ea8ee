"""The PostgreSQL the tests use is real and each test's database is its own."""

from __future__ import annotations


def test_each_test_gets_an_empty_database_on_a_real_server(pg_url: str, pg_cluster) -> None:
    import psycopg

    with psycopg.connect(pg_url) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
        conn.execute("CREATE TABLE mine (x int)")
    assert version.split(".")[0].isdigit() and tables == 0
    other = pg_cluster.new_database()
    assert other != pg_url
    with psycopg.connect(other) as conn:
        assert conn.execute("SELECT to_regclass('public.mine')").fetchone()[0] is None
