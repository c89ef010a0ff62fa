//! Host memory of training. libtorch's CPU tensors come from malloc (glibc here).
//!
//! - During a job: glibc serves blocks of 32 MiB and more with mmap and unmaps them when they
//!   are freed, and libtorch allocates a step's largest activations afresh every step (the
//!   logits and their gradients: 64 MiB each on the cold-start model). Every step faulted in
//!   and zeroed them again: a quarter of a step's time was the kernel's.
//!   [`keep_freed_pages`] makes freed memory stay with the process for the next step.
//! - After a job: what it freed would then stay resident. [`release_freed`] hands the free
//!   pages back to the system.

/// Keeps freed memory in the process for reuse until [`release_freed`]: one malloc arena (a
/// block too large for a thread's own arena would be mmapped whatever the settings), no mmap
/// for large blocks, no automatic trimming. Call it first thing in `main`, before any thread
/// exists: a thread keeps the arena it first allocated from. Elsewhere than glibc, nothing.
pub fn keep_freed_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

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
