//! The deduplication index: exact keys and MinHash signatures of every accepted document,
//! kept on disk so new data is deduplicated against everything accepted before, not only
//! against itself.
//!
//! The index directory holds `minhash.json` (the settings the signatures were made with) and
//! `index.bin`, append-only records of (tag, id, exact key, signature). A torn final record (a
//! crash mid-write) is ignored on load.
//!
//! Tags make curation replay-safe: records carry the tag of the run that accepted them (the
//! collection id), and a run opened with a tag ignores records with that tag, so curating the
//! same collection again (a redelivered event) decides exactly as the first time did.
//!
//! [`DedupIndex::forget`] appends a forget record for a document id: the records of that id
//! written before it no longer count, so the document (or a near copy) may be accepted again.

use crate::CurateError;
use crate::minhash::{LshIndex, Match, MinHashConfig, Signature};
use std::collections::HashSet;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

pub struct DedupIndex {
    exact: HashSet<u128>,
    lsh: LshIndex,
    config: MinHashConfig,
    dir: Option<PathBuf>,
    tag: String,
    pending: Vec<u8>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CurateError + '_ {
    move |source| CurateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads length-prefixed fields of a record; `None` when the bytes end first.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        (self.0.len() >= n).then(|| {
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            head
        })
    }

    fn field(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(len)
    }
}

fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The tag of a forget record: no run's tag (a collection id) starts with NUL.
const FORGET_TAG: &[u8] = b"\0forget";

/// One record of `index.bin`.
struct Record<'a> {
    tag: &'a [u8],
    id: &'a [u8],
    key: u128,
    signature: &'a [u8],
}

/// The records of `index.bin`'s bytes, in order; a torn last one ends them.
fn records(bytes: &[u8]) -> Vec<Record<'_>> {
    let mut reader = Reader(bytes);
    let mut records = Vec::new();
    while let (Some(tag), Some(id), Some(key), Some(signature)) = (
        reader.field(),
        reader.field(),
        reader.take(16),
        reader.field(),
    ) {
        let key = u128::from_le_bytes(key.try_into().expect("16 bytes"));
        records.push(Record {
            tag,
            id,
            key,
            signature,
        });
    }
    records
}

/// Which records still count: not forgotten by a later forget record, not forget records.
fn live(records: &[Record]) -> Vec<bool> {
    let mut live = vec![true; records.len()];
    let mut by_id: std::collections::HashMap<&[u8], Vec<usize>> = Default::default();
    for (i, record) in records.iter().enumerate() {
        if record.tag == FORGET_TAG {
            live[i] = false;
            for earlier in by_id.remove(record.id).unwrap_or_default() {
                live[earlier] = false;
            }
        } else {
            by_id.entry(record.id).or_default().push(i);
        }
    }
    live
}

impl DedupIndex {
    /// An index that lives only in memory.
    pub fn in_memory(config: MinHashConfig) -> DedupIndex {
        DedupIndex {
            exact: HashSet::new(),
            lsh: LshIndex::new(config),
            config,
            dir: None,
            tag: String::new(),
            pending: vec![],
        }
    }

    /// Opens (or creates) the index in `dir` for a run tagged `tag` (records of an earlier
    /// run with the same tag are ignored). Its MinHash settings are recorded there: opening it
    /// with different ones is an error, since old and new signatures would not compare.
    pub fn open(dir: &Path, config: MinHashConfig, tag: &str) -> Result<DedupIndex, CurateError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let settings = dir.join("minhash.json");
        match std::fs::read_to_string(&settings) {
            Ok(text) => {
                let saved: MinHashConfig = serde_json::from_str(&text)
                    .map_err(|e| CurateError::Index(format!("{}: {e}", settings.display())))?;
                if saved != config {
                    return Err(CurateError::Index(format!(
                        "{} was built with {saved:?}; this run asks for {config:?}",
                        dir.display()
                    )));
                }
            }
            Err(_) => std::fs::write(&settings, serde_json::to_string_pretty(&config).unwrap())
                .map_err(io(&settings))?,
        }
        let mut index = DedupIndex::in_memory(config);
        index.dir = Some(dir.to_path_buf());
        index.tag = tag.to_string();
        let bytes = read_all(&dir.join("index.bin"))?;
        let records = records(&bytes);
        for (record, live) in records.iter().zip(live(&records)) {
            if !live || (!tag.is_empty() && record.tag == tag.as_bytes()) {
                continue;
            }
            index.exact.insert(record.key);
            if !record.signature.is_empty() {
                let signature = record
                    .signature
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                let id = String::from_utf8_lossy(record.id).into_owned();
                index.lsh.insert(id, signature);
            }
        }
        Ok(index)
    }

    pub fn config(&self) -> &MinHashConfig {
        &self.config
    }

    /// Documents accepted so far (exact keys).
    pub fn len(&self) -> usize {
        self.exact.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
    }

    pub fn seen_exact(&self, key: u128) -> bool {
        self.exact.contains(&key)
    }

    pub fn near_duplicate(&self, signature: &[u32]) -> Option<Match> {
        self.lsh.query(signature)
    }

    /// Records an accepted document (written to disk at the next [`DedupIndex::flush`]).
    pub fn accept(&mut self, id: String, key: u128, signature: Signature) {
        self.exact.insert(key);
        if self.dir.is_some() {
            put_field(&mut self.pending, self.tag.as_bytes());
            put_field(&mut self.pending, id.as_bytes());
            self.pending.extend_from_slice(&key.to_le_bytes());
            let bytes: Vec<u8> = signature.iter().flat_map(|v| v.to_le_bytes()).collect();
            put_field(&mut self.pending, &bytes);
        }
        if !signature.is_empty() {
            self.lsh.insert(id, signature);
        }
    }

    /// Forgets document `id` in the index at `dir`: later runs neither match nor count it.
    /// Returns the tags of the runs that accepted it, oldest first, whether or not it was
    /// forgotten before (so a repeated request gets the same answer).
    pub fn forget(dir: &Path, id: &str) -> Result<Vec<String>, CurateError> {
        let path = dir.join("index.bin");
        let bytes = read_all(&path)?;
        let records = records(&bytes);
        let mut tags: Vec<String> = Vec::new();
        let mut counted = false;
        for (record, live) in records.iter().zip(live(&records)) {
            if record.id != id.as_bytes() || record.tag == FORGET_TAG {
                continue;
            }
            counted |= live;
            let tag = String::from_utf8_lossy(record.tag).into_owned();
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        if counted {
            let mut record = Vec::new();
            put_field(&mut record, FORGET_TAG);
            put_field(&mut record, id.as_bytes());
            record.extend_from_slice(&0u128.to_le_bytes());
            put_field(&mut record, &[]);
            append(&path, &record)?;
        }
        Ok(tags)
    }

    /// Appends what was accepted since the last flush and syncs it to disk.
    pub fn flush(&mut self) -> Result<(), CurateError> {
        match &self.dir {
            Some(dir) if !self.pending.is_empty() => {
                append(&dir.join("index.bin"), &self.pending)?;
                self.pending.clear();
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn read_all(path: &Path) -> Result<Vec<u8>, CurateError> {
    match std::fs::File::open(path) {
        Ok(mut file) => {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(io(path))?;
            Ok(bytes)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(io(path)(e)),
    }
}

fn append(path: &Path, bytes: &[u8]) -> Result<(), CurateError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))?;
    let mut writer = BufWriter::new(file);
    writer.write_all(bytes).map_err(io(path))?;
    let file = writer.into_inner().map_err(|e| io(path)(e.into_error()))?;
    file.sync_data().map_err(io(path))
}
