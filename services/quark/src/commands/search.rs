//! `quark search`: the passages of a knowledge index that answer a query, best first, as
//! JSON lines (id, score, document, source, byte range, text).

use quark_gateway::knowledge::Knowledge;
use quark_retrieval::retriever::Retriever;
use quark_retrieval::store::{Hit, SearchMode};
use quark_runtime::Settings;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct SearchArgs {
    pub query: String,
    /// The index; default: retrieval.index.
    #[arg(long)]
    pub index: Option<String>,
    /// Passages to return.
    #[arg(long, short, default_value_t = 5)]
    pub k: usize,
    /// vector, full_text (BM25) or hybrid (both, fused by reciprocal rank).
    #[arg(long, default_value = "hybrid")]
    pub mode: SearchMode,
}

pub async fn search(settings: &Settings, args: &SearchArgs) -> anyhow::Result<Vec<Hit>> {
    let retriever = retriever(settings).await?;
    let index = args.index.as_deref().unwrap_or(&settings.retrieval.index);
    Ok(retriever
        .search(index, &args.query, args.k, args.mode)
        .await?)
}

/// The retriever over the settings' indexes, with the encoder they name.
pub async fn retriever(settings: &Settings) -> anyhow::Result<Retriever> {
    let retrieval = &settings.retrieval;
    let venv = std::env::var_os("QUARK_VENV").map(PathBuf::from);
    let encoder_dir = retrieval
        .encoder_dir(venv.as_deref())
        .map_err(anyhow::Error::msg)?;
    let uri = retrieval.uri(&settings.data_dir);
    let config = quark_indexer::store_config(retrieval);
    Ok(Retriever::open(&uri, &encoder_dir, config, retrieval.batch_size).await?)
}

/// What the gateway answers chat from: the settings' index, `top_k` and `mode`.
pub async fn knowledge(settings: &Settings) -> anyhow::Result<Knowledge> {
    let retrieval = &settings.retrieval;
    let mode: SearchMode = retrieval.mode.parse().map_err(anyhow::Error::msg)?;
    let retriever = retriever(settings).await?;
    Ok(Knowledge {
        model: retriever.model().to_string(),
        retriever: std::sync::Arc::new(retriever),
        index: retrieval.index.clone(),
        k: retrieval.top_k,
        mode,
    })
}
