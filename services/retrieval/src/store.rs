//! Passages in LanceDB: one table per index, holding each passage's text, source, document,
//! dataset, byte range and vector. A full-text (BM25) index from the first rows, a vector
//! index once the table is large enough to train one, compaction after every append, and
//! deletion by document that also drops the table versions still holding the text.
//!
//! The URI is LanceDB's: a local directory, or `s3://bucket/prefix` on S3 or an S3-compatible
//! server, with its options in [`StoreConfig::storage_options`].

mod rows;
#[cfg(test)]
mod tests;

use crate::fusion;
use futures::TryStreamExt;
use lancedb::index::Index;
use lancedb::index::scalar::{FtsIndexBuilder, FullTextSearchQuery};
use lancedb::index::vector::IvfHnswSqIndexBuilder;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use lancedb::table::{Duration as VersionAge, OptimizeAction};
use lancedb::{Connection, DistanceType, Table};
pub use rows::{Embedded, Hit, Passage};
use std::collections::BTreeMap;
use std::time::Duration;

/// Columns a search returns (the vector stays in the table), and last the ranker's score,
/// named so that LanceDB does not add it on its own (a behaviour it warns will go).
const HIT_COLUMNS: [&str; 7] = [
    "id",
    "text",
    "source",
    "document_id",
    "dataset_id",
    "start",
    "end",
];

fn hit_columns(score: &'static str) -> Vec<&'static str> {
    HIT_COLUMNS.iter().copied().chain([score]).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no index named {0:?}")]
    UnknownIndex(String),
    #[error(
        "invalid index name {0:?}: use 1 to 64 letters, digits, '_' or '-', starting with a letter"
    )]
    InvalidName(String),
    #[error("index {index:?} holds {expected}-dimensional vectors; got {got}")]
    Dimensions {
        index: String,
        expected: usize,
        got: usize,
    },
    #[error("the query is {got} characters; at most {limit} are accepted")]
    QueryTooLong { got: usize, limit: usize },
    #[error("k must be between 1 and {limit}; got {got}")]
    BadK { got: usize, limit: usize },
    #[error("index {index:?} could not be read: {source}")]
    Unreadable {
        index: String,
        source: lancedb::Error,
    },
    #[error(transparent)]
    Lance(#[from] lancedb::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// How passages are found: by embedding, by BM25 over the words, or both fused by
/// reciprocal rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    Vector,
    FullText,
    Hybrid,
}

impl std::str::FromStr for SearchMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "vector" => Ok(SearchMode::Vector),
            "full_text" | "full-text" | "bm25" => Ok(SearchMode::FullText),
            "hybrid" => Ok(SearchMode::Hybrid),
            other => Err(format!(
                "unknown search mode {other:?}: vector, full_text or hybrid"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Below this many rows a vector search scans every row (exact); from it on, an IVF-HNSW
    /// index with scalar quantisation is trained once and then extended by each append.
    pub vector_index_min_rows: usize,
    /// Each search asks both rankers for this many candidates per requested hit before
    /// fusing them.
    pub candidates_per_hit: usize,
    /// Longest query accepted, in characters.
    pub max_query_chars: usize,
    /// Most hits one search may ask for.
    pub max_k: usize,
    /// The object store's options for a URI such as `s3://bucket/prefix` (`aws_endpoint`,
    /// `aws_region`, `aws_access_key_id`, `aws_secret_access_key`, `allow_http`); what is
    /// not given comes from the environment (`AWS_*`).
    pub storage_options: BTreeMap<String, String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            vector_index_min_rows: 10_000,
            candidates_per_hit: 4,
            max_query_chars: 2_000,
            max_k: 100,
            storage_options: BTreeMap::new(),
        }
    }
}

/// What an append did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Rows that were not already in the table (a passage id seen before adds nothing).
    pub rows_added: u64,
    pub rows_total: u64,
    /// The table's version after the append and its maintenance.
    pub version: u64,
}

/// A search: the query's words, its embedding, how many hits and how to rank.
#[derive(Clone, Debug)]
pub struct Search<'a> {
    pub text: &'a str,
    pub vector: &'a [f32],
    pub k: usize,
    pub mode: SearchMode,
}

/// The indexes under one LanceDB URI.
pub struct KnowledgeStore {
    db: Connection,
    uri: String,
    config: StoreConfig,
}

impl KnowledgeStore {
    pub async fn open(uri: &str, config: StoreConfig) -> Result<KnowledgeStore> {
        let db = lancedb::connect(uri)
            .storage_options(config.storage_options.clone())
            // Another process (the indexer) writes: every read looks for its latest version.
            .read_consistency_interval(Duration::ZERO)
            .execute()
            .await?;
        Ok(KnowledgeStore {
            db,
            uri: uri.to_string(),
            config,
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub async fn indexes(&self) -> Result<Vec<String>> {
        Ok(self.db.table_names().execute().await?)
    }

    async fn table(&self, index: &str) -> Result<Table> {
        check_name(index)?;
        self.db
            .open_table(index)
            .execute()
            .await
            .map_err(|source| match source {
                lancedb::Error::TableNotFound { .. } => StoreError::UnknownIndex(index.to_string()),
                source => StoreError::Unreadable {
                    index: index.to_string(),
                    source,
                },
            })
    }

    /// Whether the index exists (an unreadable one is an error, not absent).
    pub async fn exists(&self, index: &str) -> Result<bool> {
        match self.table(index).await {
            Ok(_) => Ok(true),
            Err(StoreError::UnknownIndex(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Appends the passages whose ids the table lacks, creating the index on first use, then
    /// maintains its search indexes and compacts it.
    pub async fn append(&self, index: &str, rows: &[Embedded]) -> Result<Appended> {
        check_name(index)?;
        let Some(dimensions) = rows.first().map(|row| row.vector.len()) else {
            return self.state(index).await;
        };
        let table = match self.table(index).await {
            Ok(table) => table,
            Err(StoreError::UnknownIndex(_)) => {
                let schema = rows::schema(dimensions);
                self.db.create_empty_table(index, schema).execute().await?
            }
            Err(e) => return Err(e),
        };
        let expected = rows::dimensions(table.schema().await?.as_ref());
        if let Some(row) = rows.iter().find(|row| row.vector.len() != expected) {
            return Err(StoreError::Dimensions {
                index: index.to_string(),
                expected,
                got: row.vector.len(),
            });
        }
        // Only ids the table lacks: a redelivery then writes nothing (not even a version).
        let known = known_ids(&table, rows).await?;
        let new: Vec<&Embedded> = rows
            .iter()
            .filter(|row| !known.contains(&row.passage.id))
            .collect();
        if new.is_empty() {
            return self.state(index).await;
        }
        let batch = rows::batch(&new, expected)?;
        let mut merge = table.merge_insert(&["id"]);
        merge.when_not_matched_insert_all();
        let merged = merge.execute(rows::reader(batch)).await?;
        if merged.num_inserted_rows > 0 {
            self.maintain(&table).await?;
        }
        Ok(Appended {
            rows_added: merged.num_inserted_rows,
            rows_total: table.count_rows(None).await? as u64,
            version: table.version().await?,
        })
    }

    /// The index as it stands (nothing added; zero rows and version 0 if it does not exist).
    pub async fn state(&self, index: &str) -> Result<Appended> {
        match self.table(index).await {
            Ok(table) => Ok(Appended {
                rows_added: 0,
                rows_total: table.count_rows(None).await? as u64,
                version: table.version().await?,
            }),
            Err(StoreError::UnknownIndex(_)) => Ok(Appended {
                rows_added: 0,
                rows_total: 0,
                version: 0,
            }),
            Err(e) => Err(e),
        }
    }

    /// Builds the indexes a table lacks, folds new rows into those it has, and compacts the
    /// small files each append leaves.
    async fn maintain(&self, table: &Table) -> Result<()> {
        let indexed: Vec<Vec<String>> = table
            .list_indices()
            .await?
            .into_iter()
            .map(|index| index.columns)
            .collect();
        let has = |column: &str| indexed.iter().any(|columns| columns == &[column]);
        if !has("text") {
            let fts = FtsIndexBuilder::default();
            table
                .create_index(&["text"], Index::FTS(fts))
                .execute()
                .await?;
        }
        let rows = table.count_rows(None).await?;
        if !has("vector") && rows >= self.config.vector_index_min_rows {
            let ivf = IvfHnswSqIndexBuilder::default().distance_type(DistanceType::Cosine);
            table
                .create_index(&["vector"], Index::IvfHnswSq(ivf))
                .execute()
                .await?;
        }
        table.optimize(OptimizeAction::All).await?;
        Ok(())
    }

    /// The best `k` passages for a query, best first.
    pub async fn search(&self, index: &str, search: &Search<'_>) -> Result<Vec<Hit>> {
        self.check_query(search.text, search.k)?;
        let table = self.table(index).await?;
        let candidates = search.k * self.config.candidates_per_hit;
        match search.mode {
            SearchMode::Vector => Ok(truncate(
                by_vector(&table, search, search.k).await?,
                search.k,
            )),
            SearchMode::FullText => Ok(by_words(&table, search.text, search.k).await?),
            SearchMode::Hybrid => {
                let by_meaning = by_vector(&table, search, candidates).await?;
                let by_text = by_words(&table, search.text, candidates).await?;
                Ok(fuse(vec![by_meaning, by_text], search.k))
            }
        }
    }

    /// Refuses a query longer than `max_query_chars` or a `k` outside 1..=`max_k`.
    pub fn check_query(&self, text: &str, k: usize) -> Result<()> {
        let limit = self.config.max_query_chars;
        let got = text.chars().count();
        if got > limit {
            return Err(StoreError::QueryTooLong { got, limit });
        }
        if k == 0 || k > self.config.max_k {
            let limit = self.config.max_k;
            return Err(StoreError::BadK { got: k, limit });
        }
        Ok(())
    }

    /// Removes a document's passages from every index and drops the older table versions
    /// that still hold them. Returns the rows removed per index that held any.
    pub async fn forget(&self, document_id: &str) -> Result<Vec<(String, u64)>> {
        let mut removed = Vec::new();
        for index in self.indexes().await? {
            let table = self.table(&index).await?;
            let deleted = table
                .delete(format!("document_id = {}", rows::sql_string(document_id)).as_str())
                .await?;
            if deleted.num_deleted_rows > 0 {
                table
                    .optimize(OptimizeAction::Prune {
                        older_than: Some(VersionAge::zero()),
                        // The indexer is the only writer of its tables.
                        delete_unverified: Some(true),
                        error_if_tagged_old_versions: None,
                    })
                    .await?;
                removed.push((index, deleted.num_deleted_rows));
            }
        }
        Ok(removed)
    }

    pub async fn rows(&self, index: &str) -> Result<u64> {
        Ok(self.table(index).await?.count_rows(None).await? as u64)
    }

    /// Names of the table's search indexes' columns, e.g. `["text"]`, `["vector"]`.
    pub async fn indexed_columns(&self, index: &str) -> Result<Vec<Vec<String>>> {
        let table = self.table(index).await?;
        Ok(table
            .list_indices()
            .await?
            .into_iter()
            .map(|i| i.columns)
            .collect())
    }
}

fn check_name(index: &str) -> Result<()> {
    let mut chars = index.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if starts_with_letter && rest_ok && index.len() <= 64 {
        Ok(())
    } else {
        Err(StoreError::InvalidName(index.to_string()))
    }
}

/// The ids among `passages`' that the table already holds.
async fn known_ids(
    table: &Table,
    candidates: &[Embedded],
) -> Result<std::collections::HashSet<String>> {
    let list: Vec<String> = candidates
        .iter()
        .map(|row| rows::sql_string(&row.passage.id))
        .collect();
    let stream = table
        .query()
        .only_if(format!("id IN ({})", list.join(", ")))
        .select(Select::columns(&["id"]))
        .execute()
        .await?;
    let batches: Vec<_> = stream.try_collect().await?;
    Ok(rows::strings(&batches, "id")?.into_iter().collect())
}

/// Nearest passages by cosine similarity; score = 1 − cosine distance.
async fn by_vector(table: &Table, search: &Search<'_>, limit: usize) -> Result<Vec<Hit>> {
    let stream = table
        .query()
        .nearest_to(search.vector)?
        .distance_type(DistanceType::Cosine)
        .select(Select::columns(&hit_columns("_distance")))
        .limit(limit)
        .execute()
        .await?;
    let batches: Vec<_> = stream.try_collect().await?;
    rows::hits(&batches, "_distance", |distance| 1.0 - distance)
}

/// Passages ranked by BM25 over their words.
async fn by_words(table: &Table, text: &str, limit: usize) -> Result<Vec<Hit>> {
    if text.trim().is_empty() {
        return Ok(vec![]);
    }
    let query = FullTextSearchQuery::new(text.to_string())
        .with_column("text".to_string())
        .map_err(lancedb::Error::from)?;
    let stream = table
        .query()
        .full_text_search(query)
        .select(Select::columns(&hit_columns("_score")))
        .limit(limit)
        .execute()
        .await?;
    let batches: Vec<_> = stream.try_collect().await?;
    rows::hits(&batches, "_score", |score| score)
}

fn truncate(mut hits: Vec<Hit>, k: usize) -> Vec<Hit> {
    hits.truncate(k);
    hits
}

/// Reciprocal rank fusion of rankings; a hit's score becomes its fused score.
fn fuse(rankings: Vec<Vec<Hit>>, k: usize) -> Vec<Hit> {
    let ids: Vec<Vec<String>> = rankings
        .iter()
        .map(|hits| hits.iter().map(|h| h.passage.id.clone()).collect())
        .collect();
    let mut by_id: std::collections::HashMap<String, Hit> = rankings
        .into_iter()
        .flatten()
        .map(|h| (h.passage.id.clone(), h))
        .collect();
    fusion::reciprocal_rank(&ids, fusion::K)
        .into_iter()
        .take(k)
        .filter_map(|(id, score)| by_id.remove(&id).map(|hit| Hit { score, ..hit }))
        .collect()
}
