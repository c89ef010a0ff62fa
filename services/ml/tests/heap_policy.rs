//! With `keep_freed_pages`, a training step's large blocks are reused rather than faulted in
//! afresh every step. The step here is a loss over 2,048 positions of an 8,192-token
//! vocabulary, forward and backward: the logits, their log-softmax and its gradient, 64 MiB
//! each, as in the cold-start model. The same program as a child process, with the
//! allocator's defaults, is the comparison.

use std::process::Command;
use tch::{Device, Kind, Tensor};

const STEPS: i64 = 10;
const DEFAULTS: &str = "QUARK_HEAP_POLICY_TEST_DEFAULTS";

/// Minor page faults of this process so far.
fn faults() -> i64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    usage.ru_minflt
}

/// Page faults of steps 2..=STEPS, on a thread as the trainer's are.
fn faults_after_the_first_step() -> i64 {
    std::thread::spawn(|| {
        tch::manual_seed(0);
        let options = (Kind::Float, Device::Cpu);
        let hidden = Tensor::randn([2048, 32], options).set_requires_grad(true);
        let embedding = Tensor::randn([8192, 32], options).set_requires_grad(true);
        let targets = Tensor::randint(8192, [2048], (Kind::Int64, Device::Cpu));
        let mut counted = 0;
        for step in 0..STEPS {
            let before = faults();
            let loss = hidden
                .matmul(&embedding.tr())
                .cross_entropy_for_logits(&targets);
            loss.backward();
            assert!(loss.double_value(&[]).is_finite());
            if step > 0 {
                counted += faults() - before;
            }
        }
        counted
    })
    .join()
    .unwrap()
}

fn main() {
    if std::env::var_os(DEFAULTS).is_some() {
        println!("{}", faults_after_the_first_step());
        return;
    }
    quark_ml::memory::keep_freed_pages();
    let kept = faults_after_the_first_step();
    let child = Command::new(std::env::current_exe().unwrap())
        .env(DEFAULTS, "1")
        .output()
        .unwrap();
    assert!(child.status.success(), "{child:?}");
    let defaults: i64 = String::from_utf8(child.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Three blocks of 64 MiB (16,384 pages of 4 KiB each) a step: with the defaults each is
    // mapped afresh and faulted in every step.
    let pages = (STEPS - 1) * 3 * 16_384;
    assert!(
        defaults > pages / 2,
        "defaults: {defaults} faults in {STEPS} steps"
    );
    assert!(
        kept * 3 < defaults,
        "kept: {kept} faults, defaults {defaults}"
    );
    println!("heap policy: {kept} page faults after the first step, {defaults} with the defaults");
}
