//! Passages to Arrow record batches and search results back.

use super::{Result, StoreError};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt64Type};
use arrow_array::{
    ArrayRef, FixedSizeListArray, RecordBatch, RecordBatchIterator, RecordBatchReader, StringArray,
    UInt64Array,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use std::sync::Arc;

/// A passage of a document: its text and where it came from. What is stored beside the
/// vector and what a search gives back.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Passage {
    /// Stable across redeliveries (the indexer derives it from the document and the range),
    /// so appending the same passage twice adds one row.
    pub id: String,
    pub text: String,
    /// Where the document came from (a path, a URL).
    pub source: String,
    pub document_id: String,
    pub dataset_id: String,
    /// The passage's byte range in its document.
    pub start: u64,
    pub end: u64,
}

/// A passage with its embedding, as appended.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedded {
    pub passage: Passage,
    pub vector: Vec<f32>,
}

/// A passage found by a search, with the search's score (higher is better).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Hit {
    #[serde(flatten)]
    pub passage: Passage,
    pub score: f64,
}

pub(super) fn schema(dimensions: usize) -> SchemaRef {
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("document_id", DataType::Utf8, false),
        Field::new("dataset_id", DataType::Utf8, false),
        Field::new("start", DataType::UInt64, false),
        Field::new("end", DataType::UInt64, false),
        Field::new(
            "vector",
            DataType::FixedSizeList(item, dimensions as i32),
            false,
        ),
    ]))
}

/// The vector length of a table made by [`schema`].
pub(super) fn dimensions(schema: &Schema) -> usize {
    match schema.field_with_name("vector").map(|f| f.data_type()) {
        Ok(DataType::FixedSizeList(_, n)) => *n as usize,
        _ => 0,
    }
}

pub(super) fn batch(rows: &[&Embedded], dimensions: usize) -> Result<RecordBatch> {
    let strings = |field: fn(&Passage) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|row| field(&row.passage)),
        ))
    };
    let numbers = |field: fn(&Passage) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|row| field(&row.passage)),
        ))
    };
    let vectors = FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
        rows.iter()
            .map(|row| Some(row.vector.iter().copied().map(Some))),
        dimensions as i32,
    );
    let columns = vec![
        strings(|p| &p.id),
        strings(|p| &p.text),
        strings(|p| &p.source),
        strings(|p| &p.document_id),
        strings(|p| &p.dataset_id),
        numbers(|p| p.start),
        numbers(|p| p.end),
        Arc::new(vectors),
    ];
    RecordBatch::try_new(schema(dimensions), columns)
        .map_err(|e| StoreError::Lance(lancedb::Error::from(e)))
}

pub(super) fn reader(batch: RecordBatch) -> Box<dyn RecordBatchReader + Send> {
    let schema = batch.schema();
    Box::new(RecordBatchIterator::new(
        [Ok::<_, ArrowError>(batch)],
        schema,
    ))
}

/// Rows of a search's batches as hits, in order, scored by `score(column value)`.
pub(super) fn hits(
    batches: &[RecordBatch],
    score_column: &str,
    score: fn(f64) -> f64,
) -> Result<Vec<Hit>> {
    let mut hits = Vec::new();
    for batch in batches {
        let text = |name: &str| -> Result<&StringArray> {
            column(batch, name)?
                .as_string_opt::<i32>()
                .ok_or_else(|| malformed(name))
        };
        let number = |name: &str| -> Result<&UInt64Array> {
            column(batch, name)?
                .as_primitive_opt::<UInt64Type>()
                .ok_or_else(|| malformed(name))
        };
        let scores = column(batch, score_column)?
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(|| malformed(score_column))?;
        let (ids, texts, sources) = (text("id")?, text("text")?, text("source")?);
        let (documents, datasets) = (text("document_id")?, text("dataset_id")?);
        let (starts, ends) = (number("start")?, number("end")?);
        for row in 0..batch.num_rows() {
            let passage = Passage {
                id: ids.value(row).to_string(),
                text: texts.value(row).to_string(),
                source: sources.value(row).to_string(),
                document_id: documents.value(row).to_string(),
                dataset_id: datasets.value(row).to_string(),
                start: starts.value(row),
                end: ends.value(row),
            };
            let score = score(f64::from(scores.value(row)));
            hits.push(Hit { passage, score });
        }
    }
    Ok(hits)
}

/// The values of a string column across batches.
pub(super) fn strings(batches: &[RecordBatch], name: &str) -> Result<Vec<String>> {
    let mut values = Vec::new();
    for batch in batches {
        let column = column(batch, name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| malformed(name))?;
        values.extend(column.iter().flatten().map(str::to_string));
    }
    Ok(values)
}

fn column<'b>(batch: &'b RecordBatch, name: &str) -> Result<&'b ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| malformed(name))
}

fn malformed(column: &str) -> StoreError {
    StoreError::Lance(lancedb::Error::InvalidInput {
        message: format!("a search returned no readable {column:?} column"),
    })
}

/// A string as an SQL literal (single quotes doubled).
pub(super) fn sql_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
