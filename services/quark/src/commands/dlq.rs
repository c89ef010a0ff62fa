//! `quark dlq list|redrive`: the dead letters, and sending them back to their source topic
//! once what made them fail is fixed; each redrive is recorded as dlq.redriven (who, why).

use anyhow::{bail, ensure};
use clap::Subcommand;
use quark_events::bus::{DeadLetter, Publisher, Redrive, dead_letters, ensure_topics, redrive};
use quark_events::codec::default_resolver;
use quark_runtime::Settings;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Dead letters not yet redriven (--all: every one): id, source topic, consumer, error
    /// label and error.
    List {
        #[arg(long)]
        all: bool,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to their source topic: the ids given (as `list` shows them), or
    /// every one not yet redriven (--all, or only those from --topic).
    Redrive {
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Only letters from this source topic (with --all).
        #[arg(long, requires = "all")]
        topic: Option<String>,
        /// Why, for the audit trail.
        #[arg(long)]
        reason: Option<String>,
        /// Who (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
}

pub async fn dlq(settings: &Settings, command: DlqCommand) -> anyhow::Result<()> {
    super::require_brokers(settings)?;
    ensure_topics(&settings.bus).await?;
    let letters = {
        let bus = settings.bus.clone();
        tokio::task::spawn_blocking(move || dead_letters(&bus, default_resolver().as_ref()))
            .await??
    };
    match command {
        DlqCommand::List { all, json } => {
            for letter in letters.iter().filter(|l| all || l.redelivered.is_none()) {
                match json {
                    true => println!("{}", serde_json::to_string(letter)?),
                    false => println!("{}", line(letter)),
                }
            }
            Ok(())
        }
        DlqCommand::Redrive {
            ids,
            all,
            topic,
            reason,
            by,
        } => {
            let chosen = choose(&letters, &ids, all, topic.as_deref())?;
            let operator = by
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "unknown".into());
            let publisher = Publisher::new(&settings.bus, "quark-dlq")?;
            let by = Redrive {
                operator: &operator,
                reason: reason.as_deref(),
            };
            let records = redrive(&publisher, &chosen, by).await?;
            let sent: std::collections::HashSet<_> = records
                .iter()
                .map(|r| {
                    (
                        &r.source_topic,
                        r.redelivered_partition,
                        r.redelivered_offset,
                    )
                })
                .collect();
            println!(
                "redrove {} dead letter(s) as {} message(s)",
                records.len(),
                sent.len()
            );
            Ok(())
        }
    }
}

/// The letters a redrive names: by id (each must exist and not be redriven yet), or all not
/// yet redriven, from one source topic if given.
fn choose(
    letters: &[DeadLetter],
    ids: &[String],
    all: bool,
    topic: Option<&str>,
) -> anyhow::Result<Vec<DeadLetter>> {
    if all {
        return Ok(letters
            .iter()
            .filter(|l| l.redelivered.is_none() && topic.is_none_or(|t| l.source_topic == t))
            .cloned()
            .collect());
    }
    ensure!(
        !ids.is_empty(),
        "name the dead letters to redrive (ids from `quark dlq list`), or --all"
    );
    ids.iter()
        .map(|id| match letters.iter().find(|l| &l.id == id) {
            None => bail!("no dead letter {id} (`quark dlq list` shows them)"),
            Some(l) if l.redelivered.is_some() => bail!("{id} was redriven already"),
            Some(l) => Ok(l.clone()),
        })
        .collect()
}

fn line(letter: &DeadLetter) -> String {
    let state = match letter.redelivered {
        Some((partition, offset)) => format!(" (redriven to {partition}:{offset})"),
        None => String::new(),
    };
    format!(
        "{}  from {} (given up by {})  [{}] {}{state}",
        letter.id, letter.source_topic, letter.consumer, letter.error_label, letter.error
    )
}
