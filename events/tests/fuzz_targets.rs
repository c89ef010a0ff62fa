//! The cargo-fuzz targets' library (`fuzz/src/lib.rs`: the registry of every committed schema
//! version, the damage the `mutated_event` target does, the property both targets check),
//! compiled and its tests run with the workspace. `fuzz/` is a crate of its own that only
//! `scripts/fuzz` builds, with sanitizer flags; this keeps a change to the codec's API from
//! leaving it broken unnoticed, and checks its property on a seeded sweep of damaged events.
#[path = "../../fuzz/src/lib.rs"]
mod fuzz;
