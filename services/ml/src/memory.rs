//! Host memory after a job. libtorch's CPU tensors come from malloc; glibc keeps what a job
//! frees in the arena of the thread that freed it (one per thread, up to eight per core) and
//! returns it to the system only from the top of each heap, so a long-lived process that
//! trains now and then keeps its largest job's activations resident. [`release_freed`] hands
//! the free pages of every arena back.

/// The process's resident memory in bytes (`/proc/self/statm`), where the system reports it.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Returns the freed memory of every malloc arena to the system (glibc's `malloc_trim`;
/// elsewhere nothing), and logs the resident set before and after, `after` naming the work
/// that freed it. Returns the resident bytes before and after.
pub fn release_freed(after: &str) -> (Option<u64>, Option<u64>) {
    let before = resident_bytes();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it locks each arena while it trims it.
    unsafe {
        libc::malloc_trim(0);
    }
    let now = resident_bytes();
    let mib = |bytes: Option<u64>| bytes.map_or(-1, |b| (b >> 20) as i64);
    tracing::info!(
        after,
        resident_before_mib = mib(before),
        resident_after_mib = mib(now),
        "freed host memory returned to the system"
    );
    (before, now)
}
