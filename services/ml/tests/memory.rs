//! Freed tensor memory goes back to the system (its own test binary: the figure is the whole
//! process's resident set, which tests running beside it would move).

use quark_ml::memory::release_freed;
use tch::{Device, Kind, Tensor};

#[test]
fn freed_tensor_memory_goes_back_to_the_system() {
    // 512 tensors of 64 KiB (below malloc's mmap threshold) from another thread's arena; every
    // 32nd stays alive, so the freed ones are holes that no heap top can give back.
    let kept = std::thread::spawn(|| {
        let tensors: Vec<Tensor> = (0..512)
            .map(|_| Tensor::ones([16_384], (Kind::Float, Device::Cpu)))
            .collect();
        tensors.into_iter().step_by(32).collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    let (before, after) = release_freed("the test's tensors");
    let (before, after) = (before.unwrap(), after.unwrap());
    let released = before.saturating_sub(after);
    assert!(
        released >= 16 << 20,
        "resident {before} → {after}: {released} bytes released of about 31 MiB freed"
    );
    assert_eq!(kept.len(), 16);
    assert_eq!(kept[15].sum(Kind::Float).double_value(&[]), 16_384.0);
}
