//! The projection database: SQLite by default, PostgreSQL in production, migrated on open.

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    TransactionTrait,
};
use sea_orm_migration::MigratorTrait;
use std::time::Duration;

/// Connects to `url` and applies every pending migration of `M`.
pub async fn open<M: MigratorTrait>(url: &str) -> Result<DatabaseConnection, DbErr> {
    let sqlite = url.starts_with("sqlite:");
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .and_then(|p| p.split('?').next())
        && let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| DbErr::Custom(format!("cannot create {}: {e}", parent.display())))?;
    }
    let mut options = ConnectOptions::new(url);
    options
        .sqlx_logging(false)
        .acquire_timeout(Duration::from_secs(30));
    if sqlite {
        // One writer at a time is SQLite's rule; a small pool avoids lock convoys.
        options.max_connections(4);
    }
    let db = Database::connect(options).await?;
    if sqlite {
        db.execute_unprepared("PRAGMA journal_mode=WAL; PRAGMA busy_timeout=10000;")
            .await?;
    }
    if db.get_database_backend() == DbBackend::Postgres {
        // Services started together on one database would race to apply the same migration
        // (sea-orm-migration takes no lock): one at a time, each in a transaction that holds
        // the lock until it commits.
        let txn = db.begin().await?;
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            .await?;
        M::up(&txn, None).await?;
        txn.commit().await?;
    } else {
        M::up(&db, None).await?;
    }
    Ok(db)
}

/// The PostgreSQL advisory lock key Quark's migrations take ("quark" in ASCII).
const MIGRATION_LOCK: i64 = 0x71_75_61_72_6b;

/// Inserts `row` unless a row with the same `key` columns exists (a replayed event).
pub async fn insert_new<C, A, K>(
    db: &C,
    row: A,
    key: impl IntoIterator<Item = K>,
) -> Result<(), DbErr>
where
    C: ConnectionTrait,
    A: sea_orm::ActiveModelTrait,
    K: sea_orm::sea_query::IntoIden,
{
    let result = <A::Entity as sea_orm::EntityTrait>::insert(row)
        .on_conflict(
            sea_orm::sea_query::OnConflict::columns(key)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await;
    match result {
        Ok(_) | Err(DbErr::RecordNotInserted) => Ok(()),
        Err(e) => Err(e),
    }
}
