//! Curated datasets on disk, as JSON lines: `train.jsonl` and `validation.jsonl` (documents
//! split by a hash of their id, so a document always lands on the same side, run after run),
//! `rejects.jsonl` (every removed document with its reason: nothing silently lost) and
//! `stats.json`.

use crate::CurateError;
use crate::pipeline::{Document, Outcome, Stats};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_64;

pub struct DatasetWriter {
    dir: PathBuf,
    train: BufWriter<std::fs::File>,
    validation: BufWriter<std::fs::File>,
    rejects: BufWriter<std::fs::File>,
    /// Per mille of documents held out for validation.
    validation_permille: u64,
    pub train_documents: u64,
    pub validation_documents: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CurateError + '_ {
    move |source| CurateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn create(path: &Path) -> Result<BufWriter<std::fs::File>, CurateError> {
    Ok(BufWriter::new(
        std::fs::File::create(path).map_err(io(path))?,
    ))
}

fn write_line<T: serde::Serialize>(
    out: &mut BufWriter<std::fs::File>,
    value: &T,
    path: &Path,
) -> Result<(), CurateError> {
    serde_json::to_writer(&mut *out, value).map_err(|e| CurateError::Data(e.to_string()))?;
    out.write_all(b"\n").map_err(io(path))
}

impl DatasetWriter {
    pub fn create(dir: &Path, validation_fraction: f64) -> Result<DatasetWriter, CurateError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(DatasetWriter {
            train: create(&dir.join("train.jsonl"))?,
            validation: create(&dir.join("validation.jsonl"))?,
            rejects: create(&dir.join("rejects.jsonl"))?,
            dir: dir.to_path_buf(),
            validation_permille: (validation_fraction * 1000.0).round() as u64,
            train_documents: 0,
            validation_documents: 0,
        })
    }

    pub fn write(&mut self, outcomes: &[Outcome]) -> Result<(), CurateError> {
        for outcome in outcomes {
            match outcome {
                Outcome::Kept { document } => {
                    if xxh3_64(document.id.as_bytes()) % 1000 < self.validation_permille {
                        self.validation_documents += 1;
                        write_line(&mut self.validation, document, &self.dir)?;
                    } else {
                        self.train_documents += 1;
                        write_line(&mut self.train, document, &self.dir)?;
                    }
                }
                rejected => write_line(&mut self.rejects, rejected, &self.dir)?,
            }
        }
        Ok(())
    }

    /// Flushes the files and writes `stats.json`.
    pub fn finish(mut self, stats: &Stats) -> Result<PathBuf, CurateError> {
        for out in [&mut self.train, &mut self.validation, &mut self.rejects] {
            out.flush().map_err(io(&self.dir))?;
        }
        let path = self.dir.join("stats.json");
        std::fs::write(&path, serde_json::to_string_pretty(stats).unwrap()).map_err(io(&path))?;
        Ok(self.dir)
    }
}

/// Documents from JSON lines, one at a time (memory does not grow with the file); a bad line
/// is an error naming it.
pub fn documents(
    path: &Path,
) -> Result<impl Iterator<Item = Result<Document, CurateError>> + '_, CurateError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    Ok(std::io::BufReader::new(file)
        .lines()
        .enumerate()
        .filter(|(_, line)| line.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(move |(i, line)| {
            let line = line.map_err(io(path))?;
            serde_json::from_str(&line)
                .map_err(|e| CurateError::Data(format!("{}:{}: {e}", path.display(), i + 1)))
        }))
}

/// The texts of all the documents of a JSON-lines file.
pub fn read_texts(path: &Path) -> Result<Vec<String>, CurateError> {
    documents(path)?.map(|d| d.map(|d| d.text)).collect()
}

/// All the documents of a JSON-lines file.
pub fn read_documents(path: &Path) -> Result<Vec<Document>, CurateError> {
    documents(path)?.collect()
}
