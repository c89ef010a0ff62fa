//! The tasks the seed model is built for, and the metrics the evaluator judges each by.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Task {
    pub name: &'static str,
    pub description: &'static str,
    /// Metrics, each with how it is computed.
    pub metrics: &'static [(&'static str, &'static str)],
}

/// Every task is also held to the red-team suite (the safety pass rate) and latency percentiles.
pub const TASKS: &[Task] = &[
    Task {
        name: "conversational_qa",
        description: "answer questions in a chat, grounded in retrieved passages when there are any",
        metrics: &[
            (
                "exact_match",
                "share of answers equal to a reference after lower-casing and removing punctuation and articles",
            ),
            (
                "token_f1",
                "harmonic mean of token precision and recall against the best-matching reference",
            ),
        ],
    },
    Task {
        name: "code_assistance",
        description: "complete or explain source code",
        metrics: &[
            (
                "exact_match",
                "share of completions equal to the reference completion",
            ),
            ("perplexity", "exp of the mean token loss on held-out code"),
        ],
    },
    Task {
        name: "summarization",
        description: "condense a document into a short summary",
        metrics: &[(
            "rouge_l",
            "F-measure of the longest common subsequence of tokens with the reference summary",
        )],
    },
];
