//! Fully populated example events (every optional field set, every collection non-empty), for
//! tests and benchmarks across the workspace. Built with the `samples` feature.

use crate::catalogue::{Event, EventKind};
use crate::header::EventHeader;
use crate::ids::{Id, Timestamp};
use crate::operations::*;
use crate::payloads::*;
use crate::progress::*;
use std::collections::HashMap;

fn artifact(name: &str) -> Artifact {
    Artifact {
        uri: format!("file:///var/quark/artifacts/{name}"),
        sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        size_bytes: 4096,
    }
}

fn check(metric: &str, passed: bool) -> GateCheck {
    GateCheck {
        metric: metric.into(),
        rule: GateRule::MaxRelativeIncrease,
        baseline: Some(3.25),
        candidate: if passed { 3.2 } else { 3.9 },
        threshold: 0.02,
        passed,
    }
}

/// An example event of `kind` under a fresh root header from `producer`.
pub fn sample(kind: EventKind, producer: &str) -> Event {
    let header = EventHeader {
        causation_id: Some(Id::random()),
        ..EventHeader::root(producer)
    };
    let metrics: HashMap<String, f64> = [
        ("val_loss".to_string(), 1.87),
        ("tokens_per_second".into(), 51234.5),
    ]
    .into();
    match kind {
        EventKind::DataCollected => DataCollected {
            header,
            collection_id: Id::random(),
            source_kind: SourceKind::Git,
            source_uri: "https://example.org/repo.git".into(),
            shards: vec![artifact("shard-0"), artifact("shard-1")],
            documents: 1200,
            bytes: 5_400_000,
            skipped: 3,
            license: Some("MIT".into()),
            labels: [("team".to_string(), "search".to_string())].into(),
        }
        .into(),
        EventKind::DatasetPrepared => DatasetPrepared {
            header,
            dataset_id: Id::random(),
            name: "shakespeare-char".into(),
            kind: DatasetKind::Pretrain,
            train: artifact("train"),
            validation: Some(artifact("val")),
            rejects: Some(artifact("rejects")),
            train_examples: 900,
            validation_examples: 100,
            stats: [
                ("documents_in".to_string(), 1200),
                ("near_duplicates".into(), 17),
            ]
            .into(),
            source_collections: vec![Id::random(), Id::random()],
            parent_dataset_id: Some(Id::random()),
        }
        .into(),
        EventKind::TokenizerTrained => TokenizerTrained {
            header,
            tokenizer_id: Id::random(),
            dataset_id: Id::random(),
            kind: TokenizerKind::ByteLevelBpe,
            vocab_size: 8192,
            special_tokens: vec![
                "<|endoftext|>".into(),
                "<|user|>".into(),
                "<|assistant|>".into(),
            ],
            artifact: artifact("tokenizer.json"),
        }
        .into(),
        EventKind::ModelTrained => ModelTrained {
            header,
            model_id: Id::random(),
            run_kind: RunKind::Sft,
            parent_model_id: Some(Id::random()),
            dataset_ids: vec![Id::random()],
            tokenizer_id: Id::random(),
            shape: ModelShape {
                n_layer: 4,
                n_head: 4,
                n_embd: 128,
                block_size: 64,
                vocab_size: 65,
                parameters: 800_000,
            },
            hyperparameters: [("lr".to_string(), "0.001".to_string())].into(),
            checkpoint: artifact("model.safetensors"),
            metrics,
            device: "cuda:0 (NVIDIA H100)".into(),
            steps: 2000,
            tokens: 1_536_000,
            duration_ms: 93_000,
            adapter: Some(artifact("adapter_model.safetensors")),
            choice: Some(CheckpointChoice {
                step: 20,
                fits_gate: true,
                checks: vec![check("perplexity", true)],
            }),
        }
        .into(),
        EventKind::EvalCompleted => EvalCompleted {
            header,
            evaluation_id: Id::random(),
            model_id: Id::random(),
            baseline_model_id: Some(Id::random()),
            metrics,
            checks: vec![check("perplexity", true)],
            report: artifact("report.json"),
            source: Some(RegressionSource::OfflineGate),
        }
        .into(),
        EventKind::EvalRegressed => EvalRegressed {
            header,
            evaluation_id: Id::random(),
            model_id: Id::random(),
            baseline_model_id: Some(Id::random()),
            source: RegressionSource::LiveTelemetry,
            metrics,
            regressions: vec![check("perplexity", false)],
            report: Some(artifact("report.json")),
        }
        .into(),
        EventKind::ModelPromoted => ModelPromoted {
            header,
            model_id: Id::random(),
            alias: Alias::Named,
            previous_model_id: Some(Id::random()),
            reason: PromotionReason::Rollback,
            evaluation_id: Some(Id::random()),
            checkpoint: Some(artifact("checkpoint")),
            tokenizer_id: Some(Id::random()),
            tokenizer: Some(artifact("tokenizer.json")),
            run_kind: Some(RunKind::Sft),
            parent_model_id: Some(Id::random()),
            dataset_ids: Some(vec![Id::random()]),
            trained_at: Some(Timestamp(1_700_000_000_000)),
            alias_name: Some("legal".into()),
            operator: Some("ops@example.org".into()),
            note: Some("back to the model before the bad release".into()),
        }
        .into(),
        EventKind::FeedbackReceived => FeedbackReceived {
            header,
            feedback_id: Id::random(),
            request_id: "req-42".into(),
            model_id: Id::random().to_string(),
            prompt: "What is the capital of France?".into(),
            response: "Lyon.".into(),
            rating: 1,
            correction: Some("Paris.".into()),
            preferred_response: Some("The capital of France is Paris.".into()),
            labels: vec!["task:qa".into()],
        }
        .into(),
        EventKind::TelemetryReported => TelemetryReported {
            header,
            model_id: Id::random(),
            instance: "gateway-1".into(),
            window_start: Timestamp(1_764_000_000_000),
            window_end: Timestamp(1_764_000_060_000),
            requests: 1000,
            errors: 2,
            latency_p50_ms: 12.5,
            latency_p95_ms: 40.0,
            latency_p99_ms: 88.25,
            tokens_generated: 64_000,
            feedback: 30,
            negative_feedback: 4,
            blocked: 3,
            flagged: 5,
        }
        .into(),
        EventKind::RetrainRequested => RetrainRequested {
            header,
            request_id: Id::random(),
            run_kind: RunKind::Dpo,
            base_model_id: Some(Id::random()),
            dataset_ids: vec![Id::random()],
            trigger: RetrainTrigger::FeedbackThreshold,
            reason: "32 new corrections since the last run".into(),
        }
        .into(),
        EventKind::IndexUpdated => IndexUpdated {
            header,
            index_name: "docs".into(),
            dataset_id: Id::random(),
            table_uri: "file:///var/quark/lance/docs.lance".into(),
            embedding_model: "quark-embed-small".into(),
            dimensions: 384,
            rows_added: 100,
            rows_total: 1100,
            table_version: Some(7),
        }
        .into(),
        EventKind::ForgetRequested => ForgetRequested {
            header,
            document_id: "notes/skerry.txt".into(),
            reason: Some("erasure request 2026-114".into()),
        }
        .into(),
        EventKind::DocumentForgotten => DocumentForgotten {
            header,
            document_id: "notes/skerry.txt".into(),
            dataset_ids: vec![Id::random()],
        }
        .into(),
        EventKind::DeadLetterRedriven => DeadLetterRedriven {
            header,
            dead_letter_topic: "feedback.received.dlq".into(),
            partition: 0,
            offset: 41,
            source_topic: "feedback.received".into(),
            redelivered_partition: 2,
            redelivered_offset: 1077,
            error_label: "handler_permanent".into(),
            consumer: "augmenter".into(),
            operator: "ops@example.org".into(),
            reason: Some("augmenter 0.9.1 reads ratings of 0".into()),
        }
        .into(),
        EventKind::PromotionRequested => PromotionRequested {
            header,
            action: PromotionAction::Promote,
            model_id: Some(Id::random()),
            alias_name: Some("legal".into()),
            operator: "ops@example.org".into(),
            reason: Some("the legal-domain model passed review".into()),
        }
        .into(),
        EventKind::TrainingProgressed => TrainingProgressed {
            header,
            job_id: Id::random(),
            run_kind: RunKind::Sft,
            step: 120,
            max_steps: 400,
            loss: Some(2.31),
            val_loss: None,
            tokens_per_s: Some(18_450.0),
            device: "cuda:0".into(),
        }
        .into(),
        EventKind::ResponseServed => ResponseServed {
            header,
            request_id: "chatcmpl-5f0c8f0e2b7d4c1a9e3b6d2f1a0c9e8d".into(),
            model_id: Id::random(),
            route: "champion".into(),
            endpoint: "chat".into(),
            prompt: "Who is Hamlet?".into(),
            messages: vec![ServedMessage {
                role: "user".into(),
                content: "Who is Hamlet?".into(),
            }],
            response: "The prince of Denmark.".into(),
            finish_reason: "stop".into(),
            prompt_tokens: 12,
            completion_tokens: 6,
            latency_ms: 48.5,
            streamed: true,
            instance: "gateway-1".into(),
            routing: Some(Routing {
                intent: Some("question".into()),
                intent_probability: Some(0.91),
                rule: "questions".into(),
                alias: "champion".into(),
                canary: false,
                fell_back_from: None,
                shadow: Some("challenger".into()),
            }),
            shadow_of: None,
        }
        .into(),
    }
}
