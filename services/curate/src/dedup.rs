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
        let mut reader = Reader(&bytes);
        // A record: tag, id, key, signature; a torn last one ends the loop.
        while let (Some(record_tag), Some(id), Some(key), Some(signature)) = (
            reader.field(),
            reader.field(),
            reader.take(16),
            reader.field(),
        ) {
            if !tag.is_empty() && record_tag == tag.as_bytes() {
                continue;
            }
            index
                .exact
                .insert(u128::from_le_bytes(key.try_into().unwrap()));
            if !signature.is_empty() {
                let signature = signature
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                index
                    .lsh
                    .insert(String::from_utf8_lossy(id).into_owned(), signature);
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
