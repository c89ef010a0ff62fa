//! Token shards: a dataset as one flat array of token ids, documents separated by
//! `<|endoftext|>`, read back memory-mapped so training samples windows without loading it.
//!
//! Layout: `QTOK` magic, one byte of id width (2 or 4), three zero bytes, then the ids
//! little-endian. Ids are u16 when the vocabulary fits, u32 otherwise.

use crate::MlError;
use crate::tokenizer::END_OF_TEXT;
use memmap2::Mmap;
use rayon::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

const MAGIC: &[u8; 4] = b"QTOK";
const HEADER: usize = 8;

/// Encodes `documents` in parallel and writes them to `path`; returns the number of tokens.
pub fn write(tokenizer: &Tokenizer, documents: &[String], path: &Path) -> Result<usize, MlError> {
    if documents.is_empty() {
        return Err(MlError::Empty(format!(
            "no documents for {}",
            path.display()
        )));
    }
    let end = tokenizer
        .token_to_id(END_OF_TEXT)
        .ok_or_else(|| MlError::Tokenizer(format!("the tokenizer has no {END_OF_TEXT} token")))?;
    let encoded: Vec<Vec<u32>> = documents
        .par_iter()
        .map(|doc| {
            tokenizer
                .encode(doc.as_str(), false)
                .map(|e| e.get_ids().to_vec())
        })
        .collect::<Result<_, _>>()
        .map_err(|e| MlError::Tokenizer(e.to_string()))?;
    let width: u8 = if tokenizer.get_vocab_size(true) <= 1 << 16 {
        2
    } else {
        4
    };
    let tokens: usize = encoded.iter().map(|ids| ids.len() + 1).sum();
    let mut bytes = Vec::with_capacity(HEADER + tokens * width as usize);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[width, 0, 0, 0]);
    for id in encoded
        .iter()
        .flat_map(|ids| ids.iter().chain(std::iter::once(&end)))
    {
        match width {
            2 => bytes.extend_from_slice(&(*id as u16).to_le_bytes()),
            _ => bytes.extend_from_slice(&id.to_le_bytes()),
        }
    }
    let mut file = std::fs::File::create(path).map_err(MlError::io(path))?;
    file.write_all(&bytes).map_err(MlError::io(path))?;
    Ok(tokens)
}

/// A shard opened for reading.
pub struct Shard {
    map: Mmap,
    width: usize,
    path: PathBuf,
}

impl Shard {
    pub fn open(path: &Path) -> Result<Shard, MlError> {
        let file = std::fs::File::open(path).map_err(MlError::io(path))?;
        // Safety: shards are written once and never modified in place.
        let map = unsafe { Mmap::map(&file) }.map_err(MlError::io(path))?;
        let bad = |why: &str| MlError::BadShard(path.to_path_buf(), why.to_string());
        if map.len() < HEADER || &map[..4] != MAGIC {
            return Err(bad("missing QTOK header"));
        }
        let width = map[4] as usize;
        if !matches!(width, 2 | 4) || !(map.len() - HEADER).is_multiple_of(width) {
            return Err(bad("bad id width or truncated"));
        }
        Ok(Shard {
            map,
            width,
            path: path.to_path_buf(),
        })
    }

    pub fn len(&self) -> usize {
        (self.map.len() - HEADER) / self.width
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token ids `start..start + len`.
    pub fn window(&self, start: usize, len: usize) -> Result<Vec<u32>, MlError> {
        if start + len > self.len() {
            return Err(MlError::BadShard(
                self.path.clone(),
                format!("window {start}+{len} past the end ({})", self.len()),
            ));
        }
        let bytes = &self.map[HEADER + start * self.width..HEADER + (start + len) * self.width];
        Ok(match self.width {
            2 => bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
                .collect(),
            _ => bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::train_on;

    #[test]
    fn documents_round_trip_through_a_shard() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = train_on(
            dir.path(),
            &"the quick brown fox jumps over the lazy dog\n".repeat(100),
            300,
        );
        let documents: Vec<String> = (0..50)
            .map(|i| format!("document {i}: the quick brown fox"))
            .collect();
        let path = dir.path().join("train.tok");
        let tokens = write(&tokenizer, &documents, &path).unwrap();

        let shard = Shard::open(&path).unwrap();
        assert_eq!(shard.len(), tokens);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            HEADER + 2 * tokens,
            "u16 ids for a small vocabulary"
        );
        let all = shard.window(0, shard.len()).unwrap();
        let end = tokenizer.token_to_id(END_OF_TEXT).unwrap();
        let decoded: Vec<String> = all
            .split(|id| *id == end)
            .filter(|d| !d.is_empty())
            .map(|ids| tokenizer.decode(ids, false).unwrap())
            .collect();
        assert_eq!(decoded, documents, "order and content kept");
        assert!(shard.window(tokens - 1, 2).is_err());
    }

    #[test]
    fn bad_shards_and_empty_datasets_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.tok");
        std::fs::write(&path, b"QTOK\x02\0\0\0\x01").unwrap();
        assert!(matches!(Shard::open(&path), Err(MlError::BadShard(..))));
        std::fs::write(&path, b"not a shard").unwrap();
        assert!(matches!(Shard::open(&path), Err(MlError::BadShard(..))));
        let tokenizer = train_on(dir.path(), &"a b c\n".repeat(10), 270);
        assert!(matches!(
            write(&tokenizer, &[], &path),
            Err(MlError::Empty(_))
        ));
    }
}
