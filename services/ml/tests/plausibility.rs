//! The word-order gain on real libtorch (CPU): a model trained on a text finds replies made
//! of that text likelier in their own order than shuffled, and finds no such order in
//! random letters or in the text's words strung together at random.

mod common;

use common::pretrained;
use quark_ml::chat::{Message, Role};
use quark_ml::plausibility::order_gain;

fn asked(replies: &[&str]) -> Vec<Vec<Message>> {
    replies
        .iter()
        .map(|r| {
            vec![
                Message::new(Role::User, "go on?"),
                Message::new(Role::Assistant, *r),
            ]
        })
        .collect()
}

#[test]
fn replies_in_the_language_gain_from_their_order_and_noise_does_not() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough to have learnt the text's spelling and its word order.
    let (model, tokenizer, _) = pretrained(dir.path(), 400);
    let gain = |replies: &[&str]| {
        order_gain(&model, &tokenizer, &asked(replies))
            .unwrap()
            .unwrap()
    };
    let text = gain(&[
        "that is the question:",
        "The slings and arrows of outrageous fortune,",
        "Or to take arms against a sea of troubles",
    ]);
    // The same letters at random, and the text's own words at random.
    let letters = gain(&["tqh eoi nsu", "rwa fsn gol ite", "aot tsr ehb mao"]);
    let salad = gain(&[
        "arms sea the slings",
        "nobler fortune troubles mind",
        "question arrows take suffer",
    ]);
    println!("order gain: text {text:.3}, letters {letters:.3}, salad {salad:.3} nats/token");
    assert!(text > 0.3, "text gains {text}");
    assert!(letters < text / 3.0, "letters gain {letters}, text {text}");
    assert!(salad < text / 3.0, "salad gains {salad}, text {text}");
    // Nothing to reorder: no reading.
    assert_eq!(
        order_gain(&model, &tokenizer, &asked(&["question:"])).unwrap(),
        None
    );
}
