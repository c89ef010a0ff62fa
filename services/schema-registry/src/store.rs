//! Subjects, versions, global ids and compatibility levels in the database, and a cache of
//! every registered schema (by id and by single-object fingerprint) for the codec.
//!
//! Ids are global: one per distinct schema by Parsing Canonical Form, whatever the subject, as
//! Confluent assigns them. Versions count up per subject from 1; deleting a subject is a soft
//! delete (its schemas stay readable by id and fingerprint, its version numbers are not reused).

use crate::RegistryError;
use crate::compat::CompatibilityLevel;
use crate::tables::{config, schema, version};
use apache_avro::Schema;
use futures::future::BoxFuture;
use quark_events::fingerprint::fingerprint;
use quark_events::{EventKind, LocalRegistry, SchemaMiss, SchemaResolver};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, TransactionTrait,
};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use tracing::{debug, warn};

/// One version of one subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: i32,
    pub id: i32,
    pub schema: String,
}

/// A version in a path: a number, or `latest` (also `-1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Number(i32),
}

impl FromStr for VersionSpec {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "latest" | "-1" => Ok(VersionSpec::Latest),
            _ => match s.parse::<i32>() {
                Ok(n) if n > 0 => Ok(VersionSpec::Number(n)),
                _ => Err(RegistryError::InvalidVersion(s.to_string())),
            },
        }
    }
}

/// The registry's storage; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    cache: LocalRegistry,
    /// The highest schema id loaded into the cache from the database.
    loaded_upto: AtomicI32,
    /// Registrations from this process one at a time (ids and versions are max + 1).
    writes: tokio::sync::Mutex<()>,
}

/// Parses a schema and computes its single-object fingerprint (hex).
fn parse(text: &str) -> Result<(Schema, String), RegistryError> {
    let schema =
        Schema::parse_str(text).map_err(|e| RegistryError::InvalidSchema(e.to_string()))?;
    let hex = fingerprint(&schema)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((schema, hex))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

async fn live_versions<C: ConnectionTrait>(
    db: &C,
    subject: &str,
) -> Result<Vec<version::Model>, RegistryError> {
    Ok(version::Entity::find()
        .filter(version::Column::Subject.eq(subject))
        .filter(version::Column::Deleted.eq(false))
        .order_by_asc(version::Column::Version)
        .all(db)
        .await?)
}

async fn schema_row<C: ConnectionTrait>(db: &C, id: i32) -> Result<schema::Model, RegistryError> {
    schema::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| RegistryError::SchemaNotFound(id.to_string()))
}

/// The parsed schemas of `versions`, with their version numbers.
async fn parsed<C: ConnectionTrait>(
    db: &C,
    versions: &[version::Model],
) -> Result<Vec<(i32, Schema)>, RegistryError> {
    let mut out = Vec::with_capacity(versions.len());
    for v in versions {
        out.push((
            v.version,
            parse(&schema_row(db, v.schema_id).await?.schema)?.0,
        ));
    }
    Ok(out)
}

async fn level_of<C: ConnectionTrait>(
    db: &C,
    subject: &str,
) -> Result<CompatibilityLevel, RegistryError> {
    for key in [subject, ""] {
        if let Some(row) = config::Entity::find_by_id(key.to_string()).one(db).await? {
            return row.compatibility.parse();
        }
    }
    Ok(CompatibilityLevel::DEFAULT)
}

impl Store {
    /// The registry on `db` (whose migrations include [`crate::SchemaRegistryMigration`]), its
    /// cache filled with every schema registered so far.
    pub async fn open(db: DatabaseConnection) -> Result<Store, RegistryError> {
        let store = Store {
            inner: Arc::new(Inner {
                db,
                cache: LocalRegistry::empty(),
                loaded_upto: AtomicI32::new(0),
                writes: tokio::sync::Mutex::new(()),
            }),
        };
        store.reload().await?;
        Ok(store)
    }

    /// The codec's view of this registry: every registered schema by id and fingerprint.
    pub fn resolver(&self) -> StoreResolver {
        StoreResolver {
            store: self.clone(),
        }
    }

    /// Loads the schemas registered since the last load (by any process on this database) into
    /// the cache; returns how many.
    pub async fn reload(&self) -> Result<usize, RegistryError> {
        let from = self.inner.loaded_upto.load(Ordering::Acquire);
        let rows = schema::Entity::find()
            .filter(schema::Column::Id.gt(from))
            .order_by_asc(schema::Column::Id)
            .all(&self.inner.db)
            .await?;
        for row in &rows {
            match parse(&row.schema) {
                Ok((schema, _)) => self.inner.cache.register(row.id as u32, schema),
                Err(error) => warn!(id = row.id, %error, "stored schema does not parse"),
            }
            self.inner.loaded_upto.fetch_max(row.id, Ordering::AcqRel);
        }
        Ok(rows.len())
    }

    /// Registers `text` under `subject`; returns its global id. A schema already registered
    /// under the subject returns its id again; a new one must be compatible with the earlier
    /// versions at the subject's level.
    pub async fn register(&self, subject: &str, text: &str) -> Result<i32, RegistryError> {
        let (schema, hex) = parse(text)?;
        let _one_at_a_time = self.inner.writes.lock().await;
        let txn = self.inner.db.begin().await?;
        let live = live_versions(&txn, subject).await?;
        let existing = schema::Entity::find()
            .filter(schema::Column::Fingerprint.eq(&hex))
            .one(&txn)
            .await?;
        if let Some(row) = &existing
            && live.iter().any(|v| v.schema_id == row.id)
        {
            return Ok(row.id);
        }
        let level = level_of(&txn, subject).await?;
        let messages = level.violations(&schema, &parsed(&txn, &live).await?);
        if !messages.is_empty() {
            return Err(RegistryError::Incompatible {
                subject: subject.to_string(),
                level: level.as_str(),
                messages,
            });
        }
        let id = match existing {
            Some(row) => row.id,
            None => {
                let last = schema::Entity::find()
                    .order_by_desc(schema::Column::Id)
                    .one(&txn)
                    .await?;
                let id = last.map_or(1, |row| row.id + 1);
                let row = schema::ActiveModel {
                    id: Set(id),
                    fingerprint: Set(hex),
                    schema: Set(text.to_string()),
                    registered_at: Set(now_ms()),
                };
                schema::Entity::insert(row)
                    .exec_without_returning(&txn)
                    .await?;
                id
            }
        };
        let last = version::Entity::find()
            .filter(version::Column::Subject.eq(subject))
            .order_by_desc(version::Column::Version)
            .one(&txn)
            .await?;
        let number = last.map_or(1, |v| v.version + 1);
        let row = version::ActiveModel {
            subject: Set(subject.to_string()),
            version: Set(number),
            schema_id: Set(id),
            deleted: Set(false),
        };
        version::Entity::insert(row)
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        self.inner.cache.register(id as u32, schema);
        debug!(subject, id, version = number, "registered");
        Ok(id)
    }

    /// Subjects with at least one version that is not deleted, sorted.
    pub async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        let rows = version::Entity::find()
            .filter(version::Column::Deleted.eq(false))
            .order_by_asc(version::Column::Subject)
            .all(&self.inner.db)
            .await?;
        let mut subjects: Vec<String> = rows.into_iter().map(|v| v.subject).collect();
        subjects.dedup();
        Ok(subjects)
    }

    async fn existing(&self, subject: &str) -> Result<Vec<version::Model>, RegistryError> {
        let live = live_versions(&self.inner.db, subject).await?;
        if live.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_string()));
        }
        Ok(live)
    }

    /// The version numbers of `subject`.
    pub async fn versions(&self, subject: &str) -> Result<Vec<i32>, RegistryError> {
        Ok(self
            .existing(subject)
            .await?
            .into_iter()
            .map(|v| v.version)
            .collect())
    }

    /// One version of `subject`.
    pub async fn version(
        &self,
        subject: &str,
        spec: VersionSpec,
    ) -> Result<SubjectVersion, RegistryError> {
        let live = self.existing(subject).await?;
        let found = match spec {
            VersionSpec::Latest => live.last(),
            VersionSpec::Number(n) => live.iter().find(|v| v.version == n),
        };
        let found = found.ok_or_else(|| RegistryError::VersionNotFound {
            subject: subject.to_string(),
            version: match spec {
                VersionSpec::Latest => "latest".into(),
                VersionSpec::Number(n) => n.to_string(),
            },
        })?;
        Ok(SubjectVersion {
            subject: subject.to_string(),
            version: found.version,
            id: found.schema_id,
            schema: schema_row(&self.inner.db, found.schema_id).await?.schema,
        })
    }

    /// The version of `subject` whose schema is `text` (by Parsing Canonical Form).
    pub async fn lookup(&self, subject: &str, text: &str) -> Result<SubjectVersion, RegistryError> {
        let live = self.existing(subject).await?;
        let (_, hex) = parse(text)?;
        let row = schema::Entity::find()
            .filter(schema::Column::Fingerprint.eq(&hex))
            .one(&self.inner.db)
            .await?;
        let found = row.and_then(|row| {
            let v = live.iter().rev().find(|v| v.schema_id == row.id)?;
            Some(SubjectVersion {
                subject: subject.to_string(),
                version: v.version,
                id: row.id,
                schema: row.schema,
            })
        });
        found.ok_or_else(|| RegistryError::SchemaNotFound(format!("under subject '{subject}'")))
    }

    /// The schema registered under the global `id`.
    pub async fn schema(&self, id: i32) -> Result<String, RegistryError> {
        Ok(schema_row(&self.inner.db, id).await?.schema)
    }

    /// Every (subject, version) that uses the schema `id`.
    pub async fn id_versions(&self, id: i32) -> Result<Vec<(String, i32)>, RegistryError> {
        schema_row(&self.inner.db, id).await?;
        let rows = version::Entity::find()
            .filter(version::Column::SchemaId.eq(id))
            .filter(version::Column::Deleted.eq(false))
            .order_by_asc(version::Column::Subject)
            .order_by_asc(version::Column::Version)
            .all(&self.inner.db)
            .await?;
        Ok(rows.into_iter().map(|v| (v.subject, v.version)).collect())
    }

    /// Why `text` may not be registered under `subject` (empty: it may): against one version
    /// (in that version's direction of the subject's level), or against what the level checks.
    pub async fn check(
        &self,
        subject: &str,
        against: Option<VersionSpec>,
        text: &str,
    ) -> Result<Vec<String>, RegistryError> {
        let (schema, _) = parse(text)?;
        let level = level_of(&self.inner.db, subject).await?;
        let existing = match against {
            Some(spec) => {
                let found = self.version(subject, spec).await?;
                vec![(found.version, parse(&found.schema)?.0)]
            }
            None => {
                parsed(
                    &self.inner.db,
                    &live_versions(&self.inner.db, subject).await?,
                )
                .await?
            }
        };
        Ok(level.violations(&schema, &existing))
    }

    /// The level of `subject` (its own, else the global one), or the global level.
    pub async fn level(&self, subject: Option<&str>) -> Result<CompatibilityLevel, RegistryError> {
        level_of(&self.inner.db, subject.unwrap_or("")).await
    }

    /// Sets the level of `subject`, or the global level.
    pub async fn set_level(
        &self,
        subject: Option<&str>,
        level: CompatibilityLevel,
    ) -> Result<(), RegistryError> {
        let row = config::ActiveModel {
            subject: Set(subject.unwrap_or("").to_string()),
            compatibility: Set(level.as_str().to_string()),
        };
        config::Entity::insert(row)
            .on_conflict(
                OnConflict::column(config::Column::Subject)
                    .update_column(config::Column::Compatibility)
                    .to_owned(),
            )
            .exec_without_returning(&self.inner.db)
            .await?;
        Ok(())
    }

    /// Soft-deletes every version of `subject`; returns their numbers.
    pub async fn delete_subject(&self, subject: &str) -> Result<Vec<i32>, RegistryError> {
        let _one_at_a_time = self.inner.writes.lock().await;
        let live = self.existing(subject).await?;
        version::Entity::update_many()
            .col_expr(
                version::Column::Deleted,
                sea_orm::sea_query::Expr::value(true),
            )
            .filter(version::Column::Subject.eq(subject))
            .exec(&self.inner.db)
            .await?;
        Ok(live.into_iter().map(|v| v.version).collect())
    }
}

/// The codec's resolver over a [`Store`]: lookups hit the cache; a miss reloads the schemas
/// registered since (by this or any other process on the same database).
#[derive(Clone)]
pub struct StoreResolver {
    store: Store,
}

impl SchemaResolver for StoreResolver {
    fn schema(&self, id: u32) -> Option<Arc<Schema>> {
        self.store.inner.cache.schema(id)
    }
    fn schema_by_fingerprint(&self, fingerprint: &[u8; 8]) -> Option<Arc<Schema>> {
        self.store.inner.cache.schema_by_fingerprint(fingerprint)
    }
    fn id_of(&self, kind: EventKind) -> Option<u32> {
        self.store.inner.cache.id_of(kind)
    }
    fn refresh(&self, miss: SchemaMiss) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            if let Err(error) = self.store.reload().await {
                warn!(label = error.label(), %error, "cannot reload schemas");
                return false;
            }
            match miss {
                SchemaMiss::Id(id) => self.schema(id).is_some(),
                SchemaMiss::Fingerprint(f) => self.schema_by_fingerprint(&f).is_some(),
            }
        })
    }
}
