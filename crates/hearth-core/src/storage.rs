//! The storage pool: SQLite by default (one file, WAL), PostgreSQL for
//! operators who run several instances. Both go through sqlx's `Any` driver
//! so one query serves both; SQL here is written to the common dialect
//! (`$N` parameters, `ON CONFLICT`, `BIGINT` milliseconds).
//! Migrations are embedded, one set per backend.

use crate::keys::OldVerifyKey;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor, Row};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("unsupported database URL scheme in {0:?}: use sqlite:// or postgres://")]
    UnsupportedUrl(String),
    #[error("creating the database directory {path}: {source}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A handle on the database, cheap to clone.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
}

impl Database {
    /// Opens the database at `url` without migrating it.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        busy_timeout: Duration,
    ) -> Result<Self, StorageError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            // Only the scheme: the URL may hold a password.
            let scheme = url.split(':').next().unwrap_or_default();
            return Err(StorageError::UnsupportedUrl(format!("{scheme}:")));
        };
        let url = match backend {
            Backend::Sqlite => sqlite_url(url)?,
            Backend::Postgres => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let busy_ms = busy_timeout.as_millis();
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                // One writer at a time is all SQLite allows; more connections
                // only help readers, which WAL lets run beside it.
                Backend::Sqlite => max_connections.max(2),
                Backend::Postgres => max_connections,
            })
            .acquire_timeout(busy_timeout.max(Duration::from_secs(5)))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        let busy = format!("PRAGMA busy_timeout = {busy_ms}");
                        sqlx::query(sqlx::AssertSqlSafe(busy))
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Self { pool, backend })
    }

    /// Applies the embedded migrations that have not run yet.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A round trip to the database, for health checks.
    pub async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Records a retired signing key. Retiring the same key id twice keeps
    /// the first expiry, since signatures made before it stay valid.
    pub async fn add_old_verify_key(&self, key: &OldVerifyKey) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO old_verify_keys (key_id, public_key, expired_ts) VALUES ($1, $2, $3)
             ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(&key.key_id)
        .bind(&key.key)
        .bind(key.expired_ts)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn old_verify_keys(&self) -> Result<Vec<OldVerifyKey>, StorageError> {
        let rows = sqlx::query(
            "SELECT key_id, public_key, expired_ts FROM old_verify_keys ORDER BY expired_ts, key_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(OldVerifyKey {
                    key_id: row.try_get("key_id")?,
                    key: row.try_get("public_key")?,
                    expired_ts: row.try_get("expired_ts")?,
                })
            })
            .collect()
    }
}

/// Creates the SQLite file's directory and asks for the file to be created.
fn sqlite_url(url: &str) -> Result<String, StorageError> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if !path.is_empty()
        && path != ":memory:"
        && let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    Ok(if url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    })
}

/// The default SQLite URL for a data directory.
pub fn default_sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("hearth.db").display())
}

/// Fresh databases for tests in every crate: SQLite always, PostgreSQL when
/// `HEARTH_TEST_POSTGRES` names a server (in a schema of its own, so tests
/// running at once never meet). Under `CI`, a missing PostgreSQL is an error:
/// the PostgreSQL path must not be skipped silently.
#[cfg(feature = "testing")]
pub mod testing {
    use super::{Database, Executor};
    use std::time::Duration;

    /// A migrated SQLite database in a new temporary directory, which lives
    /// as long as the returned guard.
    pub async fn sqlite() -> (Database, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = super::default_sqlite_url(dir.path());
        let db = Database::connect(&url, 4, Duration::from_secs(5))
            .await
            .expect("SQLite opens");
        db.migrate().await.expect("SQLite migrates");
        (db, dir)
    }

    /// A migrated PostgreSQL database in a fresh schema, or `None` when no
    /// server is configured outside CI.
    pub async fn postgres() -> Option<Database> {
        let url = match std::env::var("HEARTH_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI is set but HEARTH_TEST_POSTGRES is not: the PostgreSQL tests would not run"
                );
                return None;
            }
        };
        let admin = Database::connect(&url, 1, Duration::from_secs(5))
            .await
            .expect("PostgreSQL connects");
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).expect("randomness");
        let schema: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let schema = format!("test_{schema}");
        admin
            .pool()
            .execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .await
            .expect("schema created");
        admin.close().await;
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}options=-c%20search_path%3D{schema}");
        let db = Database::connect(&url, 4, Duration::from_secs(5))
            .await
            .expect("PostgreSQL connects to the test schema");
        db.migrate().await.expect("PostgreSQL migrates");
        Some(db)
    }

    /// Every backend available to this test run.
    pub async fn all() -> Vec<(Database, Option<tempfile::TempDir>)> {
        let (sqlite, dir) = sqlite().await;
        let mut dbs = vec![(sqlite, Some(dir))];
        if let Some(pg) = postgres().await {
            dbs.push((pg, None));
        }
        dbs
    }
}
