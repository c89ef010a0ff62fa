//! Per-document deletion end to end, over the real broker, SQLite, LanceDB and libtorch:
//! `quark up` trains a champion on three plays; a note ingested as knowledge is found by
//! `quark search`; `quark forget` for the note and for one of the plays takes the note's
//! passages out of the index and flags the champion, which learnt from the play; the full
//! retrain the registry then asks for leaves the play out and is not flagged.

use quark_e2e::*;
use quark_events::{Event, EventKind, RunKind};
use serde_json::Value;

const NOTE: &str = "The Skerry Light was built in 1867 on a rock two miles off the harbour. \
    Its lamp burned colza oil until 1904, when paraffin came. The keeper rowed out every \
    Monday with bread and oil.";
const QUERY: &str = "When did the lamp stop burning colza oil?";

fn run(stack: &Stack, args: &[&str]) -> String {
    let output = stack.command(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "quark {args:?}: {stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The documents of `quark search`'s hits, best first.
fn found(stack: &Stack) -> Vec<String> {
    run(stack, &["search", QUERY, "-k", "5"])
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .map(|hit| hit["document_id"].as_str().unwrap().to_string())
        .collect()
}

/// `quark models --json`'s entry for a model.
fn listed(stack: &Stack, model: &str) -> Value {
    let listing: Value = serde_json::from_str(&run(stack, &["models", "--json"])).unwrap();
    let models = listing["models"].as_array().unwrap();
    let entry = models.iter().find(|m| m["model_id"] == model);
    entry.cloned().unwrap_or(Value::Null)
}

#[test]
fn a_forgotten_document_leaves_the_index_flags_its_models_and_is_left_out_of_the_retrain() {
    let mut stack = Stack::new();
    stack.up();
    let champion = stack.wait(EventKind::ModelPromoted, |e| {
        promoted(e).map(|(id, _)| id.to_string())
    });
    let notes = stack.data.path().join("notes");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(notes.join("skerry.txt"), NOTE).unwrap();
    run(
        &stack,
        &["ingest", notes.to_str().unwrap(), "--kind", "knowledge"],
    );
    stack.wait(EventKind::IndexUpdated, |_| Some(()));
    assert_eq!(
        found(&stack).first().map(String::as_str),
        Some("skerry.txt")
    );

    let printed = run(
        &stack,
        &["forget", "skerry.txt", "--reason", "its author asked"],
    );
    assert!(printed.starts_with("forget.requested "), "{printed}");
    run(&stack, &["forget", "othello_gut.txt"]);
    let forgotten = |document: &'static str| {
        stack.wait(EventKind::DocumentForgotten, move |e| match e {
            Event::DocumentForgotten(f) if f.document_id == document => Some(f.clone()),
            _ => None,
        })
    };
    let note = forgotten("skerry.txt");
    let play = forgotten("othello_gut.txt");
    assert_eq!(note.dataset_ids.len(), 1, "the knowledge dataset held it");
    assert_eq!(play.dataset_ids.len(), 1, "the plays' dataset held it");

    // The note's passages leave the index; the champion is flagged for the play alone.
    wait_for("the note to leave the index", STACK_TIMEOUT, || {
        !found(&stack).iter().any(|d| d == "skerry.txt")
    });
    wait_for("the champion to be flagged", STACK_TIMEOUT, || {
        listed(&stack, &champion)["flagged"] == true
    });
    let entry = listed(&stack, &champion);
    assert_eq!(
        entry["forgotten_documents"],
        serde_json::json!(["othello_gut.txt"])
    );

    // The registry asks for a full retrain on the plays; the trainer leaves the play out.
    let retrain = stack.wait(EventKind::RetrainRequested, |e| match e {
        Event::RetrainRequested(r) if r.run_kind == RunKind::Pretrain => Some(r.clone()),
        _ => None,
    });
    assert_eq!(retrain.dataset_ids, play.dataset_ids);
    assert_eq!(retrain.header.causation_id, Some(play.header.event_id));
    let retrained = stack.wait(EventKind::ModelTrained, |e| match e {
        Event::ModelTrained(m) if m.header.causation_id == Some(retrain.header.event_id) => {
            Some(m.clone())
        }
        _ => None,
    });
    assert_eq!(
        (retrained.run_kind, retrained.parent_model_id),
        (RunKind::Pretrain, None)
    );
    assert_eq!(
        retrained
            .hyperparameters
            .get("forgotten_documents_left_out")
            .map(String::as_str),
        Some("1"),
        "{:?}",
        retrained.hyperparameters
    );
    let entry = listed(&stack, &retrained.model_id.to_string());
    assert_eq!(entry["flagged"], false, "{entry}");
}
