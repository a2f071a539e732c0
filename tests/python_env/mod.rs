//! Virtualenvs with pinned PyPI packages, for tests that drive a Python
//! tool: made once per machine under `target/<dir>`, and reported as the
//! reason to skip when `python3` or the package index is unavailable.

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Output;

use tokio::process::Command;

/// Runs `program` to completion, killing it if the test is dropped first.
pub async fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> std::io::Result<Output> {
    command(program, args).output().await
}

fn command(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args).kill_on_drop(true);
    command
}

/// [`run`] in the working directory `dir`, for a tool that leaves its own
/// files (caches, reports) where it runs.
pub async fn run_in(
    dir: &std::path::Path,
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
) -> std::io::Result<Output> {
    command(program, args).current_dir(dir).output().await
}

/// Exit status and both outputs, for failure messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The `bin` directory of a virtualenv in `target/<dir>` with `packages`
/// installed, or why there is none. Each set of packages gets its own
/// `dir`: making the env again for other packages starts it afresh.
pub async fn venv(dir: &str, packages: &[&str]) -> Result<PathBuf, String> {
    let venv = busmq_testkit::target_dir().join(dir);
    let bin = venv.join("bin");
    // Written last, so a half-made env (an interrupted install) is redone.
    let marker = venv.join(format!("busmq-ready-{}", packages.join("+")));
    if marker.is_file() {
        return Ok(bin);
    }
    let venv_arg = venv.to_str().ok_or("target dir is not UTF-8")?;
    let made = run("python3", &["-m", "venv", "--clear", venv_arg])
        .await
        .map_err(|err| format!("python3 not runnable: {err}"))?;
    if !made.status.success() {
        return Err(format!(
            "python3 -m venv failed (python3-venv missing?): {}",
            describe(&made)
        ));
    }
    let mut args = vec![
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ];
    args.extend(packages);
    let installed = run(bin.join("python"), &args)
        .await
        .map_err(|err| err.to_string())?;
    if !installed.status.success() {
        return Err(format!(
            "pip install from PyPI failed: {}",
            describe(&installed)
        ));
    }
    std::fs::write(&marker, b"").map_err(|err| err.to_string())?;
    Ok(bin)
}
