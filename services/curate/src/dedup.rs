//! The deduplication index: exact keys and MinHash signatures of every accepted document,
//! kept on disk so new data is deduplicated against everything accepted before, not only
//! against itself.
//!
//! Files in the index directory, both append-only: `exact.bin` (16-byte keys) and `lsh.bin`
//! (records of id length, id, signature). A record is appended only after the documents of a
//! batch are decided; a torn final record (a crash mid-write) is ignored on load.

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
    pending_exact: Vec<u128>,
    pending_lsh: Vec<(String, Signature)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CurateError + '_ {
    move |source| CurateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DedupIndex {
    /// An index that lives only in memory.
    pub fn in_memory(config: MinHashConfig) -> DedupIndex {
        DedupIndex {
            exact: HashSet::new(),
            lsh: LshIndex::new(config),
            config,
            dir: None,
            pending_exact: vec![],
            pending_lsh: vec![],
        }
    }

    /// Opens (or creates) the index in `dir`. Its MinHash settings are recorded there: opening
    /// it with different ones is an error, since old and new signatures would not compare.
    pub fn open(dir: &Path, config: MinHashConfig) -> Result<DedupIndex, CurateError> {
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
        let exact = read_all(&dir.join("exact.bin"))?;
        for key in exact.chunks_exact(16) {
            index
                .exact
                .insert(u128::from_le_bytes(key.try_into().unwrap()));
        }
        let lsh = read_all(&dir.join("lsh.bin"))?;
        let width = 4 * config.permutations();
        let mut at = 0;
        while at + 4 <= lsh.len() {
            let len = u32::from_le_bytes(lsh[at..at + 4].try_into().unwrap()) as usize;
            if at + 4 + len + width > lsh.len() {
                break; // torn by a crash mid-append
            }
            let id = String::from_utf8_lossy(&lsh[at + 4..at + 4 + len]).into_owned();
            let signature = lsh[at + 4 + len..at + 4 + len + width]
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            index.lsh.insert(id, signature);
            at += 4 + len + width;
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
        self.pending_exact.push(key);
        self.pending_lsh.push((id.clone(), signature.clone()));
        self.lsh.insert(id, signature);
    }

    /// Appends what was accepted since the last flush and syncs it to disk.
    pub fn flush(&mut self) -> Result<(), CurateError> {
        let Some(dir) = &self.dir else {
            self.pending_exact.clear();
            self.pending_lsh.clear();
            return Ok(());
        };
        let mut exact = Vec::with_capacity(16 * self.pending_exact.len());
        for key in self.pending_exact.drain(..) {
            exact.extend_from_slice(&key.to_le_bytes());
        }
        let mut lsh = Vec::new();
        for (id, signature) in self.pending_lsh.drain(..) {
            lsh.extend_from_slice(&(id.len() as u32).to_le_bytes());
            lsh.extend_from_slice(id.as_bytes());
            for value in signature {
                lsh.extend_from_slice(&value.to_le_bytes());
            }
        }
        append(&dir.join("exact.bin"), &exact)?;
        append(&dir.join("lsh.bin"), &lsh)
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
