//! Test helpers: spawn the workspace's real binaries on free ports, wait
//! until they serve, stop, kill and restart them, and clean up.
//!
//! # Finding binaries
//!
//! [`bin_path`] looks next to the running test executable
//! (`target/<profile>/deps/..`), so tests use the binaries of the same
//! build. Cargo builds a package's own binaries before its integration
//! tests; binaries of *other* packages must be built first with
//! `cargo build --workspace --bins`.
//!
//! # Cleaning up
//!
//! A [`Process`] kills its child when dropped. So that a child outlives
//! neither a test binary that exits without dropping it (a `static`
//! process shared by several tests) nor one that is killed, every child has
//! a *watchdog*: a `sh` process whose standard input is a pipe held open by
//! the test process alone. When the test process ends, however it ends, the
//! kernel closes the pipe, the watchdog reads end-of-file, SIGKILLs the
//! child by its PID and removes the child's temporary directory. Dropping a
//! [`Process`] stops its watchdog first, so the watchdog never signals a
//! PID that has already been reaped.

#![warn(missing_docs)]

pub mod deployment;
pub mod redis;
pub mod scrape;
pub mod skip;

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long [`Process::wait_ready`] waits for a process to accept
/// connections.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Process::terminate`] waits after SIGTERM before SIGKILL.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(15);

/// The workspace binary `name`, from the same target profile directory as
/// the running test executable (`target/debug/deps/x` → `target/debug/name`).
///
/// # Panics
///
/// When the binary has not been built, telling how to build it.
pub fn bin_path(name: &str) -> PathBuf {
    let path = profile_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        panic!(
            "binary {name:?} not found at {}: run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    path
}

/// Cargo's target directory, found from the running test executable
/// (`<target>/<profile>/deps/<test>`): where tests keep what outlives one
/// run, such as a Python virtualenv.
pub fn target_dir() -> PathBuf {
    profile_dir()
        .parent()
        .expect("the profile directory is inside the target directory")
        .to_path_buf()
}

/// `<target>/<profile>`, where the running test executable's build put
/// the workspace binaries.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running test executable");
    let mut dir = exe
        .parent()
        .expect("the test executable is in a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0,
/// then released). Another process may take it in between; tests accept
/// that small race.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// `127.0.0.1:` a [`free_port`].
pub fn free_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()))
}

/// How to start a [`Process`]: a workspace binary, its arguments and
/// environment, and the address it listens on. Created by
/// [`Process::builder`].
#[derive(Debug)]
pub struct ProcessBuilder {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    addr: SocketAddr,
    dir: TempDir,
}

impl ProcessBuilder {
    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets one environment variable of the process (the rest is inherited).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The address the process will listen on, which
    /// [`Process::wait_ready`] probes. Defaults to a [`free_addr`].
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// The address the process will listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `busmq serve` on `backend` (its `--backend`): the broker on this
    /// builder's address, the storage service on a [`free_addr`] (returned
    /// with the builder), the embedded store in the process's own
    /// directory. More arguments may follow.
    pub fn serve(self, backend: &str) -> (Self, SocketAddr) {
        let listen = self.addr.to_string();
        let storage = free_addr();
        let data_dir = self.dir().join("data");
        let builder = self
            .args(["serve", "--backend", backend, "--listen", &listen])
            .args(["--storage-listen", &storage.to_string()])
            .arg("--data-dir")
            .arg(data_dir);
        (builder, storage)
    }

    /// Serves the process's metrics on a [`free_addr`], returned with the
    /// builder (through `BUSMQ_METRICS_LISTEN`, so it goes with any
    /// subcommand).
    pub fn metrics(self) -> (Self, SocketAddr) {
        let addr = free_addr();
        (self.env("BUSMQ_METRICS_LISTEN", addr.to_string()), addr)
    }

    /// The process's own temporary directory (removed with it): for data
    /// directories and config files. Its log is `process.log` in it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the process (without waiting for it to serve; see
    /// [`Process::wait_ready`]).
    ///
    /// # Panics
    ///
    /// When the binary cannot be started.
    pub fn spawn(self) -> Process {
        let log_path = self.dir.path().join("process.log");
        let process = Process {
            name: self.name,
            program: self.program,
            args: self.args,
            envs: self.envs,
            addr: self.addr,
            log_path,
            running: Mutex::new(None),
            dir: self.dir,
        };
        let running = process.start();
        *process.running() = Some(running);
        process
    }
}

/// A live child and the watchdog that kills it if the test process dies.
#[derive(Debug)]
struct Running {
    child: Child,
    watchdog: Option<Child>,
}

impl Running {
    /// Stops the watchdog (so it never signals a reaped PID).
    fn disarm(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// A workspace binary running as a child process of the test, with its
/// stdout and stderr in a log file. See the [crate docs](crate) for how it
/// is cleaned up.
#[derive(Debug)]
pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    addr: SocketAddr,
    log_path: PathBuf,
    running: Mutex<Option<Running>>,
    // Last: removed after the child is gone.
    dir: TempDir,
}

impl Process {
    /// Prepares to start workspace binary `name` (see [`bin_path`]), with
    /// its metrics listener off (`BUSMQ_METRICS_LISTEN=off`): its fixed
    /// default port would collide between the servers of a test, and
    /// across tests running at once. A test of metrics passes
    /// `--metrics-listen` (which wins over the environment) or calls
    /// [`ProcessBuilder::metrics`]. `busmq serve`'s HTTP gateway is off
    /// too (`BUSMQ_HTTP_LISTEN=off`), for the same reason: a test of it
    /// passes `--http-listen`.
    ///
    /// # Panics
    ///
    /// When the binary is not built, or no temporary directory can be made.
    pub fn builder(name: &str) -> ProcessBuilder {
        let builder = Process::program(name, bin_path(name)).env("BUSMQ_METRICS_LISTEN", "off");
        if name == "busmq" {
            builder.env("BUSMQ_HTTP_LISTEN", "off")
        } else {
            builder
        }
    }

    /// Prepares to start any program by path (`redis-server`, say), named
    /// `name` in logs and panics. Cleaned up like a workspace binary.
    ///
    /// # Panics
    ///
    /// When no temporary directory can be made.
    pub fn program(name: &str, program: impl Into<PathBuf>) -> ProcessBuilder {
        ProcessBuilder {
            name: name.to_owned(),
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            addr: free_addr(),
            dir: tempfile::Builder::new()
                .prefix(&format!("busmq-testkit-{name}-"))
                .tempdir()
                .expect("creating a temporary directory"),
        }
    }

    fn running(&self) -> MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&self) -> Running {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("opening the process log");
        let err_log = log.try_clone().expect("cloning the log file handle");
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.program.display()));
        let watchdog = spawn_watchdog(child.id(), self.dir.path());
        Running { child, watchdog }
    }

    /// The binary's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address the process listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` + [`Process::addr`], for gRPC clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The PID of the running child, or `None` once it has been stopped.
    pub fn pid(&self) -> Option<u32> {
        self.running().as_ref().map(|r| r.child.id())
    }

    /// The temporary directory of the process (removed with it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the log file holding the child's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process has logged so far (across restarts).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Whether the child has exited (and reaps it if so); `Some(status)`
    /// when it has.
    pub fn try_exit_status(&self) -> Option<ExitStatus> {
        let mut running = self.running();
        let r = running.as_mut()?;
        match r.child.try_wait() {
            Ok(Some(status)) => {
                r.disarm();
                Some(status)
            }
            _ => None,
        }
    }

    /// Waits until the process accepts TCP connections on its address.
    ///
    /// # Panics
    ///
    /// Naming the binary and printing its log, when it exits first, is not
    /// running, or does not listen within [`READY_TIMEOUT`].
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.pid().is_none() {
                self.fail("is not running (stopped or killed); restart() it first");
            }
            if let Some(status) = self.try_exit_status() {
                self.fail(&format!(
                    "exited before listening on {}: {status}",
                    self.addr
                ));
            }
            let probe = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(self.addr),
            )
            .await;
            if let Ok(Ok(_)) = probe {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "did not listen on {} within {READY_TIMEOUT:?}",
                    self.addr
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{} {what}\n----- log of {} ({}) -----\n{}\n----- end of log -----",
            self.name,
            self.name,
            self.log_path.display(),
            self.log()
        );
    }

    /// Kills the child with SIGKILL and waits for it: a crash, with no
    /// chance to clean up. Does nothing when it is not running. Returns its
    /// exit status.
    pub fn kill9(&self) -> Option<ExitStatus> {
        let mut r = self.running().take()?;
        r.disarm();
        let _ = r.child.kill();
        r.child.wait().ok()
    }

    /// Sends SIGTERM (a graceful stop) and waits up to
    /// [`TERMINATE_TIMEOUT`] for the child to exit, then SIGKILLs it.
    /// Returns its exit status, `None` when it was not running.
    pub async fn terminate(&self) -> Option<ExitStatus> {
        let (pid, mut child) = {
            let mut r = self.running().take()?;
            r.disarm();
            (r.child.id(), r.child)
        };
        // Through the shell's builtin `kill`: no signal crate, no unsafe,
        // and no dependency on a `kill` binary being installed.
        let sent = Command::new("sh")
            .args(["-c", "kill -TERM \"$1\"", "sh", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !sent.is_ok_and(|s| s.success()) {
            let _ = child.kill();
        }
        let deadline = Instant::now() + TERMINATE_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "{} did not exit within {TERMINATE_TIMEOUT:?} of SIGTERM; killing it",
                    self.name
                );
                let _ = child.kill();
                return child.wait().ok();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the binary again with the same arguments, environment and
    /// port (killing it first if it still runs), and waits until it serves.
    pub async fn restart(&self) {
        self.kill9();
        if let Ok(mut log) = OpenOptions::new().append(true).open(&self.log_path) {
            let _ = writeln!(log, "----- busmq-testkit: restarting {} -----", self.name);
        }
        let running = self.start();
        *self.running() = Some(running);
        self.wait_ready().await;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} on {} ({}) -----\n{}\n----- end of log -----",
                self.name,
                self.addr,
                self.log_path.display(),
                self.log()
            );
        }
    }
}

/// Starts `sh`, reading a pipe only this process writes to; at end-of-file
/// (this process is gone) it SIGKILLs `pid` and removes `dir`. `None` if
/// no shell can be started: the child is then only cleaned up by `Drop`.
fn spawn_watchdog(pid: u32, dir: &Path) -> Option<Child> {
    const SCRIPT: &str =
        "while read -r _line; do :; done; kill -KILL \"$1\" 2>/dev/null; rm -rf \"$2\"";
    Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("busmq-testkit-watchdog")
        .arg(pid.to_string())
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("busmq-testkit: no watchdog for pid {pid}: {e}"))
        .ok()
}

/// Starts `busmq serve` on `backend` on free ports of 127.0.0.1 and waits
/// until its broker serves; returns it with its storage service's address.
pub async fn serve(backend: &str) -> (Process, SocketAddr) {
    let (builder, storage) = Process::builder("busmq").serve(backend);
    let p = builder.spawn();
    p.wait_ready().await;
    (p, storage)
}

/// Starts `busmq-storage` (memory backend) on a free port of 127.0.0.1,
/// without waiting for it to serve.
pub fn spawn_storage() -> Process {
    let builder = Process::builder("busmq-storage");
    let addr = builder.listen_addr();
    builder
        .args(["--listen", &addr.to_string(), "--backend", "memory"])
        .spawn()
}

/// Starts `busmq-storage` (memory backend) on a free port of 127.0.0.1 and
/// waits until it serves.
pub async fn storage() -> Process {
    let p = spawn_storage();
    p.wait_ready().await;
    p
}

/// Starts `busmq-storage` on `backend` (`memory`, `embedded`, a Redis URL:
/// its `--backend`) on a free port of 127.0.0.1 and waits until it serves.
pub async fn storage_on(backend: &str) -> Process {
    let builder = Process::builder("busmq-storage");
    let addr = builder.listen_addr();
    let p = builder
        .args(["--listen", &addr.to_string(), "--backend", backend])
        .spawn();
    p.wait_ready().await;
    p
}

/// Starts `busmq-broker` on a free port of 127.0.0.1, using the storage
/// service at `storage_addr`, and waits until it serves.
pub async fn broker(storage_addr: SocketAddr) -> Process {
    let builder = Process::builder("busmq-broker");
    let addr = builder.listen_addr();
    let p = builder
        .args([
            "--listen".to_owned(),
            addr.to_string(),
            "--storage".to_owned(),
            format!("http://{storage_addr}"),
        ])
        .spawn();
    p.wait_ready().await;
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }

    #[test]
    #[should_panic(expected = "cargo build --workspace --bins")]
    fn missing_binaries_say_how_to_build_them() {
        bin_path("no-such-busmq-binary");
    }
}
