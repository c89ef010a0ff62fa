//! `quark ingest`: collect documents from a file, a directory, a git repository or a web
//! crawl, store them as a shard and publish data.collected (the curator takes it from there).

use anyhow::{Context, bail};
use quark_collect::files::FileOptions;
use quark_collect::{Collected, crawl, files, git};
use quark_curator::DATASET_KIND;
use quark_events::bus::{Publisher, ensure_topics};
use quark_events::{DataCollected, DatasetKind, Event, EventHeader, Id, SourceKind};
use quark_runtime::Settings;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// Shards are cut at about this size.
const SHARD_BYTES: usize = 32 << 20;

#[derive(clap::Args, Debug)]
pub struct IngestArgs {
    /// A file, a directory, a git repository (a path holding .git, or a clone URL with --git)
    /// or an http(s) URL to crawl.
    pub source: String,
    /// Treat an URL as a git repository to clone rather than a site to crawl.
    #[arg(long)]
    pub git: bool,
    /// Crawl: pages at most.
    #[arg(long, default_value_t = 100)]
    pub max_pages: usize,
    /// Crawl: links followed from the seed.
    #[arg(long, default_value_t = 2)]
    pub max_depth: usize,
    /// Crawl: the least time between two requests to one host, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub delay_ms: u64,
    /// Crawl: hosts that may be visited besides the seed's (repeatable).
    #[arg(long)]
    pub allow_host: Vec<String>,
    /// The dataset this becomes: pretrain (text), knowledge (text for retrieval: indexed,
    /// never trained on), or sft / preference / eval / intents (JSON lines kept whole as
    /// records: conversations, preference pairs, evaluation cases, labelled requests
    /// `{"text": …, "intent": …}` the router's intent classifier learns).
    #[arg(long, value_enum, default_value = "pretrain")]
    pub kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Pretrain,
    Sft,
    Preference,
    Eval,
    Knowledge,
    Intents,
}

impl Kind {
    fn dataset_kind(self) -> DatasetKind {
        match self {
            Kind::Pretrain => DatasetKind::Pretrain,
            Kind::Sft => DatasetKind::Sft,
            Kind::Preference => DatasetKind::Preference,
            Kind::Eval => DatasetKind::Eval,
            Kind::Knowledge => DatasetKind::Knowledge,
            Kind::Intents => DatasetKind::Intents,
        }
    }

    /// Prose (documents read whole, or the `text` of JSON lines) rather than records.
    fn is_text(self) -> bool {
        matches!(self, Kind::Pretrain | Kind::Knowledge)
    }
}

impl IngestArgs {
    /// Pre-training text from a local file or directory, with the defaults.
    pub fn local(source: String) -> IngestArgs {
        IngestArgs {
            source,
            git: false,
            max_pages: 100,
            max_depth: 2,
            delay_ms: 1000,
            allow_host: vec![],
            kind: Kind::Pretrain,
        }
    }
}

async fn collect(args: &IngestArgs) -> anyhow::Result<(SourceKind, Collected)> {
    let source = args.source.as_str();
    let options = FileOptions {
        text_field: args.kind.is_text().then(|| "text".to_string()),
        ..Default::default()
    };
    let is_web = source.starts_with("http://") || source.starts_with("https://");
    Ok(if args.git || Path::new(source).join(".git").exists() {
        (SourceKind::Git, git::collect(source, &options)?)
    } else if is_web {
        let mut allow_hosts = args.allow_host.clone();
        if !allow_hosts.is_empty() {
            allow_hosts.extend(url::Url::parse(source)?.host_str().map(str::to_string));
        }
        let crawler = crawl::Crawler::new(crawl::CrawlOptions {
            seeds: vec![source.to_string()],
            allow_hosts,
            max_pages: args.max_pages,
            max_depth: args.max_depth,
            delay: Duration::from_millis(args.delay_ms),
            ..Default::default()
        })?;
        (SourceKind::Web, crawler.crawl().await)
    } else {
        let kind = if Path::new(source).is_dir() {
            SourceKind::Directory
        } else {
            SourceKind::File
        };
        (kind, files::collect(Path::new(source), &options)?)
    })
}

/// Collects, stores the shard and publishes data.collected; returns the event.
pub async fn ingest(settings: &Settings, args: &IngestArgs) -> anyhow::Result<DataCollected> {
    super::require_brokers(settings)?;
    let (source_kind, collected) = collect(args).await?;
    for skip in &collected.skipped {
        tracing::info!(source = %skip.source, reason = %skip.reason, "skipped");
    }
    if collected.documents.is_empty() {
        bail!(
            "nothing to ingest from {}: {} item(s) skipped",
            args.source,
            collected.skipped.len()
        );
    }
    // Shards of bounded size, so the curator can stream them.
    let store = settings.artifact_store()?;
    let mut shards = vec![];
    let mut shard = Vec::new();
    for (i, document) in collected.documents.iter().enumerate() {
        serde_json::to_writer(&mut shard, document)?;
        shard.push(b'\n');
        if shard.len() >= SHARD_BYTES || i + 1 == collected.documents.len() {
            shards.push(store.put(&shard).await.context("cannot store a shard")?);
            shard.clear();
        }
    }
    let event = DataCollected {
        header: EventHeader::root("quark-ingest"),
        collection_id: Id::random(),
        source_kind,
        source_uri: args.source.clone(),
        shards,
        documents: collected.documents.len() as i64,
        bytes: collected
            .documents
            .iter()
            .map(|d| d.text.len() as i64)
            .sum(),
        skipped: collected.skipped.len() as i64,
        license: collected.license.clone(),
        labels: HashMap::from([(
            DATASET_KIND.to_string(),
            args.kind.dataset_kind().name().to_string(),
        )]),
    };
    ensure_topics(&settings.bus)
        .await
        .context("cannot create the topics")?;
    Publisher::new(&settings.bus, "quark-ingest")?
        .publish_all(&[Event::DataCollected(event.clone())])
        .await?;
    Ok(event)
}
