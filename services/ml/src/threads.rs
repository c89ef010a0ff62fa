//! How many intra-op threads one thread's libtorch work uses. `tch::set_num_threads` is
//! process-wide, and libtorch also gives its value to every thread started later (the
//! trainer's among them); OpenMP's own setting belongs to the thread that makes it.

use crate::MlError;
use std::ffi::c_int;

/// The intra-op threads the calling thread's libtorch operations use.
pub fn intra_op() -> usize {
    tch::get_num_threads() as usize
}

/// Limits the calling thread's libtorch operations (and MKL's, which follow OpenMP's
/// setting) to `threads` threads; other threads keep theirs. Returns the count now in force.
pub fn limit_this_thread(threads: usize) -> Result<usize, MlError> {
    if threads == 0 {
        return Err(MlError::Config(
            "a thread needs at least 1 intra-op thread".into(),
        ));
    }
    // libtorch copies its process-wide count into a thread's OpenMP setting on the thread's
    // first parallel operation; reading the count does that first, so it cannot undo ours.
    let _ = tch::get_num_threads();
    // SAFETY: `dlsym` is given a NUL-terminated name; the symbol it finds is OpenMP's
    // `void omp_set_num_threads(int)`, loaded with libtorch.
    let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"omp_set_num_threads".as_ptr()) };
    if symbol.is_null() {
        return Err(MlError::Config(
            "libtorch was built without OpenMP: intra-op threads cannot be set per thread".into(),
        ));
    }
    let set: extern "C" fn(c_int) = unsafe { std::mem::transmute(symbol) };
    set(c_int::try_from(threads).unwrap_or(c_int::MAX));
    Ok(intra_op())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_holds_for_its_thread_only() {
        let before = tch::get_num_threads();
        let inside = std::thread::spawn(|| {
            let set = limit_this_thread(1).unwrap();
            // A parallel operation after the limit does not restore the process-wide count.
            let _ = tch::Tensor::ones([1 << 16], (tch::Kind::Float, tch::Device::Cpu))
                .sum(tch::Kind::Float);
            (set, tch::get_num_threads())
        })
        .join()
        .unwrap();
        assert_eq!(inside, (1, 1));
        assert_eq!(tch::get_num_threads(), before);
        let fresh = std::thread::spawn(tch::get_num_threads).join().unwrap();
        assert_eq!(
            fresh, before,
            "a thread started later keeps the process-wide count"
        );
        assert!(limit_this_thread(0).is_err());
    }
}
