//! The storage pool: SQLite by default (one file, WAL), PostgreSQL for
//! operators who run several instances. Both go through sqlx's `Any` driver
//! so one query serves both; SQL here is written to the common dialect
//! (`$N` parameters, `ON CONFLICT`, `BIGINT` milliseconds).
//! Each crate owns its tables as a [`Schema`]: numbered migrations written
//! once for both backends, run by [`Database::migrate`] after the schemas
//! they depend on.

use crate::keys::OldVerifyKey;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor, Row};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// One crate's tables: its migrations in order, and the schemas whose tables
/// it uses (migrated first).
#[derive(Debug)]
pub struct Schema {
    /// Names the crate in `hearth_migrations`; never changes once released.
    pub component: &'static str,
    pub depends_on: &'static [&'static Schema],
    /// Versions 1, 2, ... in order. A released migration never changes.
    pub migrations: &'static [Migration],
}

/// One step of a [`Schema`]. The SQL is the dialect both backends share;
/// the one thing they spell differently, an auto-incrementing key, is
/// written `AUTO_ID` and expanded per backend.
#[derive(Debug)]
pub struct Migration {
    pub description: &'static str,
    pub sql: &'static str,
}

/// The core's own tables: the retired signing keys.
pub static SCHEMA: Schema = Schema {
    component: "core",
    depends_on: &[],
    migrations: &[Migration {
        description: "old verify keys",
        sql: include_str!("../migrations/0001_old_verify_keys.sql"),
    }],
};

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
    #[error("migration {component} {version} ({description}): {source}")]
    Migrate {
        component: &'static str,
        version: usize,
        description: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "the database has {component} schema version {found}, newer than this build knows ({known}); run the newer Hearth"
    )]
    TooNew {
        component: &'static str,
        found: i64,
        known: usize,
    },
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

    /// Applies the migrations of `schema`, and of the schemas it depends
    /// on, that have not run yet. Returns what it applied, as
    /// `"component version: description"`. Each migration runs in its own
    /// transaction; on PostgreSQL an advisory lock lets several instances
    /// start at once.
    pub async fn migrate(&self, schema: &'static Schema) -> Result<Vec<String>, StorageError> {
        let mut order = Vec::new();
        dependency_order(schema, &mut order);
        self.pool
            .execute(
                "CREATE TABLE IF NOT EXISTS hearth_migrations (
                    component TEXT NOT NULL,
                    version BIGINT NOT NULL,
                    description TEXT NOT NULL,
                    applied_ts BIGINT NOT NULL,
                    PRIMARY KEY (component, version)
                )",
            )
            .await?;
        self.adopt_sqlx_migrations().await?;
        let mut applied = Vec::new();
        for schema in order {
            for (index, migration) in schema.migrations.iter().enumerate() {
                let version = index + 1;
                if self.apply(schema, version, migration).await? {
                    applied.push(format!(
                        "{} {version}: {}",
                        schema.component, migration.description
                    ));
                }
            }
        }
        Ok(applied)
    }

    /// Databases made before each crate owned its schema recorded sqlx's
    /// migrations 1 to 3, which are now core 1, auth 1 and identity 1 with
    /// the same tables. Recorded once, so those tables are not made again.
    async fn adopt_sqlx_migrations(&self) -> Result<(), StorageError> {
        let known: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM hearth_migrations")
            .fetch_one(&self.pool)
            .await?;
        // An error means there is no such table: a database made since.
        let Ok(old) = sqlx::query_scalar::<_, i64>(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await
        else {
            return Ok(());
        };
        if known > 0 {
            return Ok(());
        }
        for (version, component) in [(1, "core"), (2, "auth"), (3, "identity")] {
            if old.contains(&version) {
                sqlx::query(
                    "INSERT INTO hearth_migrations (component, version, description, applied_ts)
                     VALUES ($1, 1, 'adopted from _sqlx_migrations', $2)",
                )
                .bind(component)
                .bind(crate::time::now_ms())
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    /// Runs one migration unless it already ran; true when it ran here.
    async fn apply(
        &self,
        schema: &'static Schema,
        version: usize,
        migration: &'static Migration,
    ) -> Result<bool, StorageError> {
        let failed = |source| StorageError::Migrate {
            component: schema.component,
            version,
            description: migration.description,
            source,
        };
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            // Held to the end of the transaction: one migrator at a time.
            sqlx::query("SELECT pg_advisory_xact_lock(7243012858)")
                .execute(&mut *tx)
                .await?;
        }
        let newest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM hearth_migrations WHERE component = $1")
                .bind(schema.component)
                .fetch_one(&mut *tx)
                .await?;
        let newest = newest.unwrap_or(0);
        if newest > i64::try_from(schema.migrations.len()).unwrap_or(i64::MAX) {
            return Err(StorageError::TooNew {
                component: schema.component,
                found: newest,
                known: schema.migrations.len(),
            });
        }
        if newest >= version as i64 {
            return Ok(false);
        }
        let auto_id = match self.backend {
            Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Backend::Postgres => "BIGSERIAL PRIMARY KEY",
        };
        let sql = migration.sql.replace("AUTO_ID", auto_id);
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        sqlx::query(
            "INSERT INTO hearth_migrations (component, version, description, applied_ts)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(schema.component)
        .bind(version as i64)
        .bind(migration.description)
        .bind(crate::time::now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
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

/// `schema` after everything it depends on, each schema once.
fn dependency_order(schema: &'static Schema, order: &mut Vec<&'static Schema>) {
    for dependency in schema.depends_on {
        dependency_order(dependency, order);
    }
    if !order.iter().any(|s| s.component == schema.component) {
        order.push(schema);
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
    use super::{Database, Executor, Schema};
    use std::time::Duration;

    /// A migrated SQLite database in a new temporary directory, which lives
    /// as long as the returned guard.
    pub async fn sqlite(schema: &'static Schema) -> (Database, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = super::default_sqlite_url(dir.path());
        let db = Database::connect(&url, 4, Duration::from_secs(5))
            .await
            .expect("SQLite opens");
        db.migrate(schema).await.expect("SQLite migrates");
        (db, dir)
    }

    /// A migrated PostgreSQL database in a fresh schema, or `None` when no
    /// server is configured outside CI.
    pub async fn postgres(schema: &'static Schema) -> Option<Database> {
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
        let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let pg_schema = format!("test_{hex}");
        admin
            .pool()
            .execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {pg_schema}")))
            .await
            .expect("schema created");
        admin.close().await;
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}options=-c%20search_path%3D{pg_schema}");
        let db = Database::connect(&url, 4, Duration::from_secs(5))
            .await
            .expect("PostgreSQL connects to the test schema");
        db.migrate(schema).await.expect("PostgreSQL migrates");
        Some(db)
    }

    /// Every backend available to this test run.
    pub async fn all(schema: &'static Schema) -> Vec<(Database, Option<tempfile::TempDir>)> {
        let (sqlite, dir) = sqlite(schema).await;
        let mut dbs = vec![(sqlite, Some(dir))];
        if let Some(pg) = postgres(schema).await {
            dbs.push((pg, None));
        }
        dbs
    }
}
