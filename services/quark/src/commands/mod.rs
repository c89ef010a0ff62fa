//! One module per `quark` sub-command.

pub mod compare;
pub mod corpus;
pub mod generate;
pub mod ingest;
pub mod intents;
pub mod measure;
pub mod models;
pub mod moderation;
pub mod plan;
pub mod progress;
pub mod promote;
pub mod publish;
pub mod quantize;
pub mod replay;
pub mod run;
pub mod schema_registry;
pub mod search;
pub mod topics;
pub mod trace;
pub mod train;
pub mod training_bar;
pub mod watch;
