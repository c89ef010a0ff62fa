//! One module per `quark` sub-command.

pub mod generate;
pub mod ingest;
pub mod plan;
pub mod publish;
pub mod run;
pub mod topics;
pub mod trace;
pub mod train;
pub mod watch;
