//! A script in tests/node that drives headless Chromium (Debian's, through playwright-core) in
//! step with a test: it says words on stdout and reads the test's answers on stdin.

use super::Process;
use std::io::{BufRead, BufReader, Lines, Write};
use std::path::Path;
use std::process::{ChildStdout, Command, Stdio};

pub struct BrowserScript {
    process: Process,
    said: Lines<BufReader<ChildStdout>>,
}

impl BrowserScript {
    /// Starts `tests/node/<script>` with `args`.
    pub fn start(script: &str, args: &[&str]) -> BrowserScript {
        let mut process = Process(
            Command::new("node")
                .arg(
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("node")
                        .join(script),
                )
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("node (scripts/bootstrap installs playwright-core; Debian's chromium)"),
        );
        let said = BufReader::new(process.0.stdout.take().unwrap()).lines();
        BrowserScript { process, said }
    }

    /// The script's next line (it blocks: call it from a blocking context).
    pub fn hear(&mut self) -> String {
        match self.said.next() {
            Some(line) => line.unwrap(),
            None => panic!(
                "the browser script ended early ({:?}); its errors are above",
                self.process.0.wait()
            ),
        }
    }

    pub fn tell(&mut self, line: &str) {
        writeln!(self.process.0.stdin.as_mut().unwrap(), "{line}").unwrap();
    }

    /// Waits for the script to end, and asserts it ended well.
    pub fn finish(mut self) {
        assert!(self.process.0.wait().unwrap().success());
    }
}

/// Where screenshots go: `docs/` with QUARK_SCREENSHOTS=docs, else `scratch`.
pub fn screenshots(scratch: &Path) -> String {
    match std::env::var("QUARK_SCREENSHOTS").as_deref() {
        Ok("docs") => concat!(env!("CARGO_MANIFEST_DIR"), "/../docs").into(),
        _ => scratch.display().to_string(),
    }
}
