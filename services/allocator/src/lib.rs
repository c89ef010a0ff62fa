//! The allocator of the `quark` process: jemalloc, for Rust and for the C and C++ libraries in
//! the process alike (libtorch's tensors, librdkafka's buffers), linked in place of the C
//! library's `malloc`. Link it into a binary with `use quark_allocator as _;`.
//!
//! Why not glibc's malloc: libtorch allocates a training step's largest activations afresh
//! every step (the logits and their gradients: 64 MiB each on the cold-start model). glibc maps
//! blocks that large and unmaps them when freed, so every step faulted them in and zeroed them
//! again. Kept in its heap instead (one arena, no mmap, no trimming), freed blocks were not
//! always reused (libtorch asks for 64-byte-aligned memory, a little larger than the hole a
//! freed block leaves), and with training, evaluation and serving in one process the heap grew
//! to 2.7–3.3 GiB while a job ran. jemalloc serves large blocks in page-aligned extents, keeps
//! a freed extent for the next request of its size, and hands pages unused for 10 s
//! back to the system from a background thread, so memory follows the work both ways.

#[cfg(target_os = "linux")]
use tikv_jemalloc_sys as _;

#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this symbol at start (the `MALLOC_CONF` environment variable
/// overrides them): freed pages go back to the system after 10 s unused, straight away rather
/// than through the lazily freed state (whose pages still count as resident), from a background
/// thread, so even an idle process returns them. Without that thread jemalloc gives blocks over
/// 8 MiB back at once, as glibc does.
#[cfg(target_os = "linux")]
#[unsafe(export_name = "malloc_conf")]
static MALLOC_CONF: &[u8; 61] = b"dirty_decay_ms:10000,muzzy_decay_ms:0,background_thread:true\0";
