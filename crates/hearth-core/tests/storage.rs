//! `hearth_core::storage::Database` against both backends: the same body runs
//! on a SQLite file in a temporary directory (always) and on PostgreSQL when
//! `HEARTH_TEST_POSTGRES` holds a URL, in a fresh schema of their own.

use hearth_core::keys::OldVerifyKey;
use hearth_core::storage::{
    Backend, Database, Migration, SCHEMA, Schema, StorageError, default_sqlite_url,
};
use sqlx::Row;
use std::time::Duration;

const BUSY_TIMEOUT: Duration = Duration::from_millis(4321);

fn key(key_id: &str, key: &str, expired_ts: i64) -> OldVerifyKey {
    OldVerifyKey {
        key_id: key_id.to_owned(),
        key: key.to_owned(),
        expired_ts,
    }
}

/// What every backend must do the same way.
async fn exercise(db: &Database) {
    db.migrate(&SCHEMA).await.expect("first migration");
    db.migrate(&SCHEMA)
        .await
        .expect("a second migration is a no-op, not an error");
    db.ping().await.expect("ping");

    assert_eq!(db.old_verify_keys().await.unwrap(), Vec::new());

    // Inserted out of order: read back by expiry, then key id.
    let late = key("ed25519:c", "cccc", 3_000_000_000_000);
    let early = key("ed25519:a", "aaaa", 1_000_000_000_000);
    let middle = key("ed25519:b", "bbbb", 2_000_000_000_000);
    let tie = key("ed25519:0", "0000", 2_000_000_000_000);
    for k in [&late, &early, &middle, &tie] {
        db.add_old_verify_key(k).await.unwrap();
    }
    assert_eq!(
        db.old_verify_keys().await.unwrap(),
        vec![early.clone(), tie.clone(), middle.clone(), late.clone()]
    );

    // Retiring a key id again keeps the first record: signatures made before
    // the first expiry stay valid.
    db.add_old_verify_key(&key("ed25519:a", "zzzz", 9_000_000_000_000))
        .await
        .expect("a duplicate key id is not an error");
    let keys = db.old_verify_keys().await.unwrap();
    assert_eq!(keys.len(), 4);
    assert_eq!(keys[0], early, "the first expiry and key must be kept");

    // Millisecond timestamps beyond 32 bits survive (BIGINT on both).
    let far = key("ed25519:far", "ffff", i64::MAX);
    db.add_old_verify_key(&far).await.unwrap();
    assert_eq!(db.old_verify_keys().await.unwrap().last(), Some(&far));

    // Migrations still see the applied state after data went in.
    db.migrate(&SCHEMA)
        .await
        .expect("migrating a populated database");
    assert_eq!(db.old_verify_keys().await.unwrap().len(), 5);

    schemas(db).await;

    // A clone is a handle on the same pool.
    let clone = db.clone();
    clone.ping().await.unwrap();
    assert_eq!(clone.old_verify_keys().await.unwrap().len(), 5);
}

static BASE: Schema = Schema {
    component: "test_base",
    depends_on: &[&SCHEMA],
    migrations: &[Migration {
        description: "a table with an auto-incrementing key",
        sql: "CREATE TABLE test_base (id AUTO_ID, name TEXT NOT NULL);
              CREATE INDEX test_base_name ON test_base (name);",
    }],
};

static ON_TOP: Schema = Schema {
    component: "test_on_top",
    depends_on: &[&BASE],
    migrations: &[
        Migration {
            description: "first",
            sql: "CREATE TABLE test_on_top (base_id BIGINT NOT NULL)",
        },
        Migration {
            description: "second",
            sql: "ALTER TABLE test_on_top ADD COLUMN note TEXT",
        },
    ],
};

static TOO_OLD: Schema = Schema {
    component: "test_on_top",
    depends_on: &[],
    migrations: &[Migration {
        description: "first",
        sql: "CREATE TABLE test_on_top (base_id BIGINT NOT NULL)",
    }],
};

/// Schemas run after those they depend on, each step once, with `AUTO_ID`
/// spelled per backend; a database newer than the build is refused.
async fn schemas(db: &Database) {
    let applied = db.migrate(&ON_TOP).await.unwrap();
    assert_eq!(
        applied,
        [
            "test_base 1: a table with an auto-incrementing key",
            "test_on_top 1: first",
            "test_on_top 2: second",
        ],
        "core's own schema ran before, so only these are new"
    );
    assert!(db.migrate(&ON_TOP).await.unwrap().is_empty());
    for name in ["a", "b"] {
        sqlx::query("INSERT INTO test_base (name) VALUES ($1)")
            .bind(name)
            .execute(db.pool())
            .await
            .unwrap();
    }
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM test_base ORDER BY id")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(ids, [1, 2]);
    sqlx::query("INSERT INTO test_on_top (base_id, note) VALUES (1, 'x')")
        .execute(db.pool())
        .await
        .unwrap();
    let err = db.migrate(&TOO_OLD).await.unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::TooNew {
                found: 2,
                known: 1,
                ..
            }
        ),
        "{err}"
    );
}

/// A database made when sqlx's migrator ran the three original migrations
/// keeps its tables: they are recorded as core 1, auth 1 and identity 1.
#[tokio::test]
async fn adopts_databases_made_by_the_sqlx_migrator() {
    static AUTH_LIKE: Schema = Schema {
        component: "auth",
        depends_on: &[],
        migrations: &[Migration {
            description: "would fail if it ran again",
            sql: "CREATE TABLE adopted_marker (x BIGINT)",
        }],
    };
    let dir = tempfile::tempdir().unwrap();
    let db = Database::connect(&default_sqlite_url(dir.path()), 2, BUSY_TIMEOUT)
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, success BOOLEAN NOT NULL);
         INSERT INTO _sqlx_migrations VALUES (1, TRUE), (2, TRUE), (3, TRUE);
         CREATE TABLE old_verify_keys (key_id TEXT PRIMARY KEY NOT NULL, public_key TEXT NOT NULL, expired_ts BIGINT NOT NULL);
         CREATE TABLE adopted_marker (x BIGINT);",
    )
    .execute(db.pool())
    .await
    .unwrap();
    assert!(db.migrate(&SCHEMA).await.unwrap().is_empty());
    assert!(db.migrate(&AUTH_LIKE).await.unwrap().is_empty());
    db.close().await;
}

#[tokio::test]
async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    // Neither the file nor its parent directories exist yet.
    let path = dir.path().join("nested/data/dir/hearth.db");
    let url = format!("sqlite://{}", path.display());
    let db = Database::connect(&url, 4, BUSY_TIMEOUT).await.unwrap();
    assert_eq!(db.backend(), Backend::Sqlite);
    assert!(path.is_file(), "the SQLite file was not created");

    exercise(&db).await;

    // The pragmas hold on every pooled connection, not only the first.
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(db.pool().acquire().await.unwrap());
    }
    for conn in &mut conns {
        let journal: String = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&mut **conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(journal, "wal");
        let foreign_keys: i64 = sqlx::query("PRAGMA foreign_keys")
            .fetch_one(&mut **conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(foreign_keys, 1);
        let busy: i64 = sqlx::query("PRAGMA busy_timeout")
            .fetch_one(&mut **conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(busy, 4321);
        let synchronous: i64 = sqlx::query("PRAGMA synchronous")
            .fetch_one(&mut **conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(synchronous, 1, "synchronous = NORMAL");
    }
    drop(conns);
    db.close().await;

    // Data persists in the file across a reconnect.
    let again = Database::connect(&url, 1, BUSY_TIMEOUT).await.unwrap();
    again.migrate(&SCHEMA).await.unwrap();
    assert_eq!(again.old_verify_keys().await.unwrap().len(), 5);
    again.close().await;
}

/// The URL `hearth` builds for a data directory that does not exist yet
/// (a first start) works too, and query parameters are kept.
#[tokio::test]
async fn sqlite_default_url_and_query_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("state/hearth");
    let db = Database::connect(&default_sqlite_url(&data_dir), 2, BUSY_TIMEOUT)
        .await
        .unwrap();
    db.migrate(&SCHEMA).await.unwrap();
    db.ping().await.unwrap();
    assert!(data_dir.join("hearth.db").is_file());
    db.close().await;

    let path = dir.path().join("other/with-params.db");
    let url = format!("sqlite://{}?cache=private", path.display());
    let db = Database::connect(&url, 2, BUSY_TIMEOUT).await.unwrap();
    db.migrate(&SCHEMA).await.unwrap();
    assert!(path.is_file());
    db.close().await;
}

#[tokio::test]
async fn postgres() {
    let Some(db) = hearth_core::storage::testing::postgres(&SCHEMA).await else {
        eprintln!("skipping the PostgreSQL storage test: HEARTH_TEST_POSTGRES is not set");
        return;
    };
    assert_eq!(db.backend(), Backend::Postgres);
    exercise(&db).await;
    db.close().await;
}

/// Only SQLite and PostgreSQL are supported, and the error names the scheme
/// without echoing the rest of the URL, which may hold a password.
#[tokio::test]
async fn unsupported_url_scheme_does_not_echo_the_password() {
    for url in [
        "mysql://hearth:hunter2@db.example.org/hearth",
        "mariadb://hearth:hunter2@db.example.org:3306/hearth",
        "postgress://hearth:hunter2@db.example.org/hearth",
    ] {
        let err = Database::connect(url, 1, BUSY_TIMEOUT).await.unwrap_err();
        let message = err.to_string();
        let debug = format!("{err:?}");
        assert!(
            matches!(err, StorageError::UnsupportedUrl(_)),
            "{url}: {debug}"
        );
        let scheme = url.split(':').next().unwrap();
        assert!(message.contains(scheme), "{message}");
        for leaked in ["hunter2", "db.example.org"] {
            assert!(!message.contains(leaked), "{leaked} in {message}");
            assert!(!debug.contains(leaked), "{leaked} in {debug}");
        }
    }
}
