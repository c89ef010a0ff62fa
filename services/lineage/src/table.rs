//! The projection's one table, named at run time (`<prefix>_lineage`): rows keyed by entry
//! kind and key, each holding its source as JSON.

use async_trait::async_trait;
use sea_orm::sea_query::{ColumnDef, Expr, ExprTrait, Index, OnConflict, Order, Query, Table};
use sea_orm::{ConnectionTrait, DbErr};
use sea_orm_migration::{MigrationName, MigrationTrait, SchemaManager};
use serde::de::DeserializeOwned;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Entry {
    Dataset,
    Tokenizer,
    Model,
    Alias,
    Forgotten,
}

impl Entry {
    fn name(self) -> &'static str {
        match self {
            Entry::Dataset => "dataset",
            Entry::Tokenizer => "tokenizer",
            Entry::Model => "model",
            Entry::Alias => "alias",
            Entry::Forgotten => "forgotten",
        }
    }
}

pub(crate) struct Row {
    pub entry: Entry,
    pub key: String,
    pub tag: String,
    pub at: i64,
    pub body: String,
}

const COLUMNS: [&str; 5] = ["entry", "key", "tag", "at", "body"];

fn insert_statement(table: &str, row: Row) -> sea_orm::sea_query::InsertStatement {
    Query::insert()
        .into_table(table.to_string())
        .columns(COLUMNS)
        .values_panic([
            row.entry.name().into(),
            row.key.into(),
            row.tag.into(),
            row.at.into(),
            row.body.into(),
        ])
        .to_owned()
}

/// Inserts the row unless one with its entry and key exists (the first one stays).
pub(crate) async fn insert<C: ConnectionTrait>(db: &C, table: &str, row: Row) -> Result<(), DbErr> {
    let statement = insert_statement(table, row)
        .on_conflict(
            OnConflict::columns(["entry", "key"])
                .do_nothing()
                .to_owned(),
        )
        .to_owned();
    match db.execute(&statement).await {
        Ok(_) | Err(DbErr::RecordNotInserted) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Inserts the row, or replaces the one with its entry and key if that one is not newer.
pub(crate) async fn upsert_if_newer<C: ConnectionTrait>(
    db: &C,
    table: &str,
    row: Row,
) -> Result<(), DbErr> {
    let existing = Query::select()
        .column("at")
        .from(table.to_string())
        .and_where(Expr::col("entry").eq(row.entry.name()))
        .and_where(Expr::col("key").eq(row.key.as_str()))
        .to_owned();
    if let Some(found) = db.query_one(&existing).await? {
        if found.try_get::<i64>("", "at")? > row.at {
            return Ok(());
        }
        let update = Query::update()
            .table(table.to_string())
            .values([
                ("tag", row.tag.into()),
                ("at", row.at.into()),
                ("body", row.body.into()),
            ])
            .and_where(Expr::col("entry").eq(row.entry.name()))
            .and_where(Expr::col("key").eq(row.key.as_str()))
            .to_owned();
        db.execute(&update).await?;
        return Ok(());
    }
    db.execute(&insert_statement(table, row)).await?;
    Ok(())
}

fn parse<T: DeserializeOwned>(row: &sea_orm::QueryResult) -> Result<T, DbErr> {
    let body: String = row.try_get("", "body")?;
    serde_json::from_str(&body).map_err(|e| DbErr::Json(e.to_string()))
}

pub(crate) async fn get<C: ConnectionTrait, T: DeserializeOwned>(
    db: &C,
    table: &str,
    entry: Entry,
    key: &str,
) -> Result<Option<T>, DbErr> {
    let select = Query::select()
        .column("body")
        .from(table.to_string())
        .and_where(Expr::col("entry").eq(entry.name()))
        .and_where(Expr::col("key").eq(key))
        .to_owned();
    db.query_one(&select).await?.as_ref().map(parse).transpose()
}

/// Every row of an entry kind (with `tag`, if one is given), oldest first.
pub(crate) async fn tagged<C: ConnectionTrait, T: DeserializeOwned>(
    db: &C,
    table: &str,
    entry: Entry,
    tag: Option<&str>,
) -> Result<Vec<T>, DbErr> {
    let mut select = Query::select()
        .column("body")
        .from(table.to_string())
        .and_where(Expr::col("entry").eq(entry.name()))
        .to_owned();
    if let Some(tag) = tag {
        select.and_where(Expr::col("tag").eq(tag));
    }
    let select = select
        .order_by("at", Order::Asc)
        .order_by("key", Order::Asc)
        .to_owned();
    db.query_all(&select).await?.iter().map(parse).collect()
}

/// Creates one service's lineage table.
pub struct LineageMigration {
    table: String,
    name: String,
}

impl LineageMigration {
    pub(crate) fn new(table: String) -> Self {
        LineageMigration {
            name: format!("m0100_{table}"),
            table,
        }
    }
}

impl MigrationName for LineageMigration {
    fn name(&self) -> &str {
        &self.name
    }
}

#[async_trait]
impl MigrationTrait for LineageMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let text = |name: &'static str| ColumnDef::new(name).text().not_null().to_owned();
        manager
            .create_table(
                Table::create()
                    .table(self.table.clone())
                    .if_not_exists()
                    .col(ColumnDef::new("entry").string_len(16).not_null())
                    .col(ColumnDef::new("key").string_len(64).not_null())
                    .col(ColumnDef::new("tag").string_len(64).not_null())
                    .col(ColumnDef::new("at").big_integer().not_null())
                    .col(text("body"))
                    .primary_key(Index::create().col("entry").col("key"))
                    .to_owned(),
            )
            .await
    }
}
