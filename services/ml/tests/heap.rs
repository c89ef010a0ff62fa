//! Under the `quark` process's allocator (`quark_allocator`), a training step's large blocks
//! are reused step after step rather than faulted in afresh, and go back to the system once
//! the work stops. The step is a loss over 2,048 positions of an 8,192-token vocabulary,
//! forward and backward: the logits, their log-softmax and its gradient, 64 MiB each, as in
//! the cold-start model. The comparison is the same program as a child process without
//! jemalloc's background thread (`MALLOC_CONF` overrides the built-in options), its default:
//! blocks over 8 MiB then go back to the system as soon as they are freed, as glibc does.

// The `quark` process's allocator, as the binary links it.
use quark_allocator as _;
use std::process::Command;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

const STEPS: i64 = 10;
const CHILD: &str = "QUARK_HEAP_TEST_CHILD";
const MIB: u64 = 1 << 20;

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

/// This process's resident memory in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf only reads a system constant.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// Waits until the resident set is at most `target` bytes; how long that took.
fn until_resident_at_most(target: u64, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = resident_bytes();
        if now <= target {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "resident {} MiB after {limit:?}, expected at most {} MiB",
            now / MIB,
            target / MIB
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        println!("{}", faults_after_the_first_step());
        return;
    }
    let kept = faults_after_the_first_step();
    // The step's blocks are freed now, and held for reuse for a while...
    let held = resident_bytes();
    // ...then handed back: at least two of the three 64 MiB blocks within the decay time.
    let returned_after = until_resident_at_most(held - 128 * MIB, Duration::from_secs(60));
    let child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .env("MALLOC_CONF", "background_thread:false")
        .output()
        .unwrap();
    assert!(child.status.success(), "{child:?}");
    let defaults: i64 = String::from_utf8(child.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Three blocks of 64 MiB (16,384 pages of 4 KiB each) a step: given back at once, each is
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
    println!(
        "heap: {kept} page faults after the first step, {defaults} with large blocks given back \
         at once; {} MiB resident after the steps, 128 MiB of it given back {:.1} s later",
        held / MIB,
        returned_after.as_secs_f64()
    );
}
