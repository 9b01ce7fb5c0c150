//! The users table, behind SQLite or PostgreSQL (sqlx's `Any` driver).
//!
//! Every write is one atomic statement guarded by the version the client read
//! (`UPDATE … WHERE id = $ AND version = $`), and bumps the collection version in the
//! same transaction, so `GET /users` can be validated without loading the list.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Primary key.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Email address.
    pub email: String,
    /// Incremented by every write: the source of the user's ETag.
    pub version: i64,
    /// Last write, microseconds since the Unix epoch.
    #[serde(serialize_with = "as_rfc3339")]
    pub updated_at: i64,
}

fn as_rfc3339<S: serde::Serializer>(micros: &i64, s: S) -> Result<S::Ok, S::Error> {
    let time = UNIX_EPOCH + std::time::Duration::from_micros((*micros).max(0) as u64);
    s.collect_str(&humantime::format_rfc3339_millis(time))
}

/// Which versions a conditional write accepts: the strong tags of `If-Match`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// `If-Match: *`: any existing version.
    Any,
    /// One of these versions.
    Versions(Vec<i64>),
}

/// The result of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome<T> {
    /// The write happened.
    Done(T),
    /// The user exists at another version.
    Stale(User),
    /// No such user.
    NotFound,
}

/// Fields of a new or replaced user.
#[derive(Debug, Clone)]
pub struct Fields {
    /// Display name; `None` keeps the current one (PATCH).
    pub name: Option<String>,
    /// Email; `None` keeps the current one (PATCH).
    pub email: Option<String>,
}

const COLUMNS: &str = "id, name, email, version, updated_at";

/// The users store.
#[derive(Debug, Clone)]
pub struct UserStore {
    pool: AnyPool,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn user(row: &sqlx::any::AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        email: row.try_get("email")?,
        version: row.try_get("version")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl UserStore {
    /// Connects to `url` (`sqlite://FILE` or `postgres://…`) and creates the schema.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        install_default_drivers();
        let postgres = url.starts_with("postgres:") || url.starts_with("postgresql:");
        let url = if !postgres && !url.contains("mode=") {
            // Create the SQLite file on first run.
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        } else {
            url.to_string()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if postgres { 16 } else { 4 })
            .connect(&url)
            .await?;
        let store = Self { pool };
        store.migrate(postgres).await?;
        Ok(store)
    }

    async fn migrate(&self, postgres: bool) -> Result<(), sqlx::Error> {
        if !postgres {
            // WAL lets readers proceed during a write; the busy timeout (5 s by
            // default in sqlx) queues concurrent writers instead of failing them.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&self.pool)
                .await?;
        }
        let id = if postgres {
            "BIGSERIAL PRIMARY KEY"
        } else {
            "INTEGER PRIMARY KEY AUTOINCREMENT"
        };
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS users (id {id}, name TEXT NOT NULL, email TEXT NOT NULL, \
             version BIGINT NOT NULL, updated_at BIGINT NOT NULL)"
        ))
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS users_collection (id INTEGER PRIMARY KEY, version BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "INSERT INTO users_collection (id, version) VALUES (1, 1) ON CONFLICT DO NOTHING",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Inserts a few users when the table is empty; returns how many it added.
    pub async fn seed(&self) -> Result<usize, sqlx::Error> {
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        if count > 0 {
            return Ok(0);
        }
        let seeds = [
            ("Ada Lovelace", "ada@example.com"),
            ("Grace Hopper", "grace@example.com"),
            ("Alan Turing", "alan@example.com"),
        ];
        for (name, email) in seeds {
            self.create(name, email).await?;
        }
        Ok(seeds.len())
    }

    /// The collection version, bumped by every create, update and delete.
    pub async fn collection_version(&self) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT version FROM users_collection WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get("version")
    }

    /// The version and last write of one user, without the rest of the row.
    pub async fn validators(&self, id: i64) -> Result<Option<(i64, i64)>, sqlx::Error> {
        let row = sqlx::query("SELECT version, updated_at FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("version")?, r.try_get("updated_at")?)))
            .transpose()
    }

    /// One user.
    pub async fn get(&self, id: i64) -> Result<Option<User>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user).transpose()
    }

    /// Every user, by id.
    pub async fn list(&self) -> Result<Vec<User>, sqlx::Error> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM users ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user).collect()
    }

    /// Creates a user at version 1.
    pub async fn create(&self, name: &str, email: &str) -> Result<User, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO users (name, email, version, updated_at) VALUES ($1, $2, 1, $3) RETURNING {COLUMNS}"
        ))
        .bind(name)
        .bind(email)
        .bind(now_micros())
        .fetch_one(&mut *tx)
        .await?;
        bump_collection(&mut tx).await?;
        tx.commit().await?;
        user(&row)
    }

    /// Updates a user if its version is one of `expected`: the check and the write
    /// are the same statement, so two writers with the same version cannot both win.
    pub async fn update(
        &self,
        id: i64,
        expected: &Expected,
        fields: &Fields,
    ) -> Result<WriteOutcome<User>, sqlx::Error> {
        for version in candidates(expected) {
            let mut tx = self.pool.begin().await?;
            let sql = format!(
                "UPDATE users SET name = COALESCE($1, name), email = COALESCE($2, email), \
                 version = version + 1, updated_at = $3 WHERE id = $4{} RETURNING {COLUMNS}",
                if version.is_some() {
                    " AND version = $5"
                } else {
                    ""
                }
            );
            let mut query = sqlx::query(&sql)
                .bind(fields.name.clone())
                .bind(fields.email.clone())
                .bind(now_micros())
                .bind(id);
            if let Some(version) = version {
                query = query.bind(version);
            }
            if let Some(row) = query.fetch_optional(&mut *tx).await? {
                bump_collection(&mut tx).await?;
                tx.commit().await?;
                return Ok(WriteOutcome::Done(user(&row)?));
            }
            tx.rollback().await?;
        }
        self.outcome_of_failed_write(id).await
    }

    /// Deletes a user if its version is one of `expected`, in one statement.
    pub async fn delete(
        &self,
        id: i64,
        expected: &Expected,
    ) -> Result<WriteOutcome<()>, sqlx::Error> {
        for version in candidates(expected) {
            let mut tx = self.pool.begin().await?;
            let sql = format!(
                "DELETE FROM users WHERE id = $1{}",
                if version.is_some() {
                    " AND version = $2"
                } else {
                    ""
                }
            );
            let mut query = sqlx::query(&sql).bind(id);
            if let Some(version) = version {
                query = query.bind(version);
            }
            if query.execute(&mut *tx).await?.rows_affected() == 1 {
                bump_collection(&mut tx).await?;
                tx.commit().await?;
                return Ok(WriteOutcome::Done(()));
            }
            tx.rollback().await?;
        }
        Ok(match self.outcome_of_failed_write::<()>(id).await? {
            WriteOutcome::Stale(user) => WriteOutcome::Stale(user),
            _ => WriteOutcome::NotFound,
        })
    }

    async fn outcome_of_failed_write<T>(&self, id: i64) -> Result<WriteOutcome<T>, sqlx::Error> {
        Ok(match self.get(id).await? {
            Some(current) => WriteOutcome::Stale(current),
            None => WriteOutcome::NotFound,
        })
    }
}

/// `None` stands for "any version" (`If-Match: *`).
fn candidates(expected: &Expected) -> Vec<Option<i64>> {
    match expected {
        Expected::Any => vec![None],
        Expected::Versions(versions) => versions.iter().copied().map(Some).collect(),
    }
}

async fn bump_collection(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users_collection SET version = version + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    Ok(())
}
