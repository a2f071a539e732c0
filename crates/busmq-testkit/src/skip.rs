//! Tests that report themselves skipped.
//!
//! Rust's test harness has no runtime skip: a test that cannot run here (no
//! Docker engine, no Python package index) would otherwise pass silently.
//! [`skip`] records the test and the reason in `target/skipped/<test>.txt`
//! and prints it; `scripts/test.sh` clears that directory before the run,
//! counts its files in the summary line's "skipped" and lists the reasons.

use std::path::PathBuf;

/// Where skip records go: `target/skipped`.
pub fn skipped_dir() -> PathBuf {
    crate::target_dir().join("skipped")
}

/// Records that `test` did not run, and why. The caller then returns
/// without asserting anything.
pub fn skip(test: &str, reason: &str) {
    let dir = skipped_dir();
    let line = format!("{test}: {reason}\n");
    eprintln!("SKIPPED {line}");
    if let Err(err) = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join(format!("{test}.txt")), &line))
    {
        // The summary will miss this skip; make it loud in the log at least.
        eprintln!("could not record the skip in {}: {err}", dir.display());
    }
}
