//! Distillation in the loop, over the real broker: `quark retrain --distill` asks for a distill
//! run of the champion; the trainer trains a student with half its layers, started from every
//! other block of the champion, on the teacher's next-token distribution over the pre-training
//! data (model.trained, run kind distill); the gate measures it against the champion like any
//! candidate.

use quark_e2e::*;
use quark_events::{Event, EventKind, RunKind};

#[test]
fn a_distilled_student_is_trained_from_the_champion_and_gated() {
    let mut quark = Stack::new();
    quark
        .env
        .push(("QUARK__TRAINER__DISTILL__STEPS".into(), "60".into()));
    let champion = quark.serve_first_champion();
    let teacher = trained(&quark.events(EventKind::ModelTrained))
        .into_iter()
        .find(|m| m.model_id == champion)
        .unwrap();
    let out = quark
        .command(&["retrain", "--distill", "--reason", "a faster model"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let student = quark.wait(EventKind::ModelTrained, |e| match e {
        Event::ModelTrained(m) if m.run_kind == RunKind::Distill => Some(m.clone()),
        _ => None,
    });
    assert_eq!(student.parent_model_id, Some(champion));
    assert_eq!(student.shape.n_layer * 2, teacher.shape.n_layer);
    assert_eq!(
        (student.shape.n_embd, student.shape.vocab_size),
        (teacher.shape.n_embd, teacher.shape.vocab_size)
    );
    assert_eq!(student.steps, 60);
    assert_eq!(student.hyperparameters["kl_share"], "0.9");
    assert!(student.metrics["train_loss"].is_finite());
    assert!(student.shape.parameters < teacher.shape.parameters);

    // The gate reads it against the champion, whichever way it decides.
    let verdict = || {
        let passed = quark.events(EventKind::EvalCompleted).into_iter();
        let failed = quark.events(EventKind::EvalRegressed).into_iter();
        passed.chain(failed).find_map(|e| match e {
            Event::EvalCompleted(c) if c.model_id == student.model_id => {
                Some(("passed", c.metrics))
            }
            Event::EvalRegressed(r) if r.model_id == student.model_id => {
                Some(("failed", r.metrics))
            }
            _ => None,
        })
    };
    wait_for("the gate's verdict on the student", STACK_TIMEOUT, || {
        verdict().is_some()
    });
    let (decision, metrics) = verdict().unwrap();
    let perplexity = metrics["perplexity"];
    assert!(perplexity.is_finite() && perplexity > 1.0, "{metrics:?}");
    eprintln!("the gate {decision} the student: perplexity {perplexity:.2}");
}
