//! Real Redis deployments for tests: standalone servers, independent
//! shards, a Sentinel set and a Cluster, each `redis-server` a
//! [`Process`] on a free port of 127.0.0.1 with its own temporary
//! directory, cleaned up like every other process of the testkit (see the
//! [crate docs](crate)).
//!
//! Servers run with persistence off (`--save "" --appendonly no`) unless a
//! test passes its own arguments. `redis-server` and `redis-cli` are found
//! on `PATH` (or through `BUSMQ_REDIS_SERVER` / `BUSMQ_REDIS_CLI`);
//! `scripts/test.sh` installs them when they are missing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Process, free_port};

/// Bound on waiting for a deployment to settle (replication, sentinels
/// discovering each other, a cluster agreeing on its slots).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Name of the master set of [`sentinel_set`].
pub const SENTINEL_MASTER: &str = "mymaster";

fn find(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "{name} not found on PATH (nor in ${env}): install Redis, e.g. \
             `apt-get install redis-server redis-tools`, or run ./scripts/test.sh"
        )
    })
}

/// The `redis-server` binary.
///
/// # Panics
///
/// When it is not installed, telling how to install it.
pub fn redis_server_path() -> PathBuf {
    find("BUSMQ_REDIS_SERVER", "redis-server")
}

/// The `redis-cli` binary.
///
/// # Panics
///
/// When it is not installed, telling how to install it.
pub fn redis_cli_path() -> PathBuf {
    find("BUSMQ_REDIS_CLI", "redis-cli")
}

/// Runs `redis-cli -h 127.0.0.1 -p <port> <args>` and returns its standard
/// output, trimmed; `Err` with its output when it fails or answers an
/// error.
pub async fn cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(redis_cli_path())
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("redis-cli {args:?} on port {port} timed out"))?
    .map_err(|e| format!("running redis-cli: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success()
        || stdout.starts_with("ERR")
        || stdout.starts_with("(error)")
        || stdout.starts_with("Could not connect")
    {
        return Err(format!(
            "redis-cli {args:?} on port {port}: {stdout} {stderr}"
        ));
    }
    Ok(stdout)
}

/// One `redis-server` process (a data node or a sentinel).
#[derive(Debug)]
pub struct RedisServer {
    process: Process,
}

impl RedisServer {
    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.process.addr().port()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    /// The process, to kill, restart or read the log of.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Runs `redis-cli` against this server; panics when it fails.
    pub async fn cli(&self, args: &[&str]) -> String {
        cli(self.port(), args)
            .await
            .unwrap_or_else(|e| panic!("{e}\n----- log -----\n{}", self.process.log()))
    }

    /// `DBSIZE`.
    pub async fn dbsize(&self) -> u64 {
        let out = self.cli(&["DBSIZE"]).await;
        out.parse()
            .unwrap_or_else(|_| panic!("DBSIZE answered {out:?}"))
    }
}

/// Standard arguments of a data node on `port` with its files in `dir`.
fn server_args(port: u16, dir: &Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Starts a `redis-server` on `port` (a free one when `None`) with
/// `extra` arguments after the standard ones, and waits until it serves.
pub async fn redis_server_on(port: Option<u16>, extra: &[&str]) -> RedisServer {
    let port = port.unwrap_or_else(free_port);
    let builder = Process::program("redis-server", redis_server_path())
        .addr(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let args = server_args(port, builder.dir());
    let process = builder.args(args).args(extra).spawn();
    process.wait_ready().await;
    let server = RedisServer { process };
    wait_until("redis-server answers PING", || async {
        cli(server.port(), &["PING"])
            .await
            .is_ok_and(|o| o == "PONG")
    })
    .await;
    server
}

/// A standalone `redis-server` on a free port.
pub async fn redis_server() -> RedisServer {
    redis_server_on(None, &[]).await
}

/// `n` independent `redis-server`s (shards).
pub async fn redis_shards(n: usize) -> Vec<RedisServer> {
    let mut shards = Vec::with_capacity(n);
    for _ in 0..n {
        shards.push(redis_server().await);
    }
    shards
}

/// Polls `check` every 50 ms until it is true; panics after
/// [`SETTLE_TIMEOUT`] naming `what`.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while !check().await {
        if Instant::now() >= deadline {
            panic!("{what}: not within {SETTLE_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Sentinel set: one master, one replica and three sentinels watching
/// [`SENTINEL_MASTER`] (quorum 2, down after 1 s).
#[derive(Debug)]
pub struct SentinelSet {
    /// The data nodes: the master at start, then its replica. Which one is
    /// master changes with a failover; see [`SentinelSet::master_port`].
    pub nodes: Vec<RedisServer>,
    /// The three sentinels.
    pub sentinels: Vec<RedisServer>,
}

impl SentinelSet {
    /// `redis+sentinel://127.0.0.1:<s1>,.../mymaster`.
    pub fn spec(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        format!("redis+sentinel://{}/{SENTINEL_MASTER}", hosts.join(","))
    }

    /// The port of the master according to the first sentinel that answers.
    pub async fn master_port(&self) -> u16 {
        for s in &self.sentinels {
            if let Ok(out) = cli(
                s.port(),
                &["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER],
            )
            .await
                && let Some(port) = out.lines().nth(1).and_then(|p| p.trim().parse().ok())
            {
                return port;
            }
        }
        panic!("no sentinel knows the master");
    }

    /// The data node that is master now.
    pub async fn master(&self) -> &RedisServer {
        let port = self.master_port().await;
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .expect("the master is one of the nodes")
    }

    /// Forces a failover (`SENTINEL FAILOVER`) and waits until the sentinels
    /// name the other node as master and it answers as one. Returns the new
    /// master's port.
    pub async fn failover(&self) -> u16 {
        let old = self.master_port().await;
        self.sentinels[0]
            .cli(&["SENTINEL", "FAILOVER", SENTINEL_MASTER])
            .await;
        wait_until("the sentinels to promote the replica", || async {
            let port = self.master_port().await;
            port != old
                && cli(port, &["ROLE"])
                    .await
                    .is_ok_and(|r| r.starts_with("master"))
        })
        .await;
        self.master_port().await
    }
}

/// Starts a [`SentinelSet`] and waits until the replica is in sync and
/// every sentinel knows the replica and the other two sentinels (so a
/// failover can happen).
pub async fn sentinel_set() -> SentinelSet {
    let master = redis_server().await;
    let replica_of = master.port().to_string();
    let replica = redis_server_on(None, &["--replicaof", "127.0.0.1", &replica_of]).await;
    wait_until("the replica to sync with the master", || async {
        cli(replica.port(), &["INFO", "replication"])
            .await
            .is_ok_and(|i| i.contains("master_link_status:up"))
    })
    .await;
    let mut sentinels = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let builder = Process::program("redis-sentinel", redis_server_path())
            .addr(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        let conf = builder.dir().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {m} 2\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 5000\n\
                 sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                dir = builder.dir().display(),
                m = master.port(),
            ),
        )
        .expect("writing sentinel.conf");
        let process = builder.arg(&conf).arg("--sentinel").spawn();
        process.wait_ready().await;
        sentinels.push(RedisServer { process });
    }
    for s in &sentinels {
        wait_until(
            "every sentinel to know the replica and the other sentinels",
            || async {
                let replicas = cli(s.port(), &["SENTINEL", "replicas", SENTINEL_MASTER])
                    .await
                    .unwrap_or_default();
                let peers = cli(s.port(), &["SENTINEL", "sentinels", SENTINEL_MASTER])
                    .await
                    .unwrap_or_default();
                replicas.contains(&replica.port().to_string())
                    && sentinels
                        .iter()
                        .filter(|o| o.port() != s.port())
                        .all(|o| peers.contains(&o.port().to_string()))
            },
        )
        .await;
    }
    SentinelSet {
        nodes: vec![master, replica],
        sentinels,
    }
}

/// A Redis Cluster of masters only.
#[derive(Debug)]
pub struct RedisCluster {
    /// The masters.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,...`.
    pub fn spec(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

/// Starts `masters` cluster-enabled servers, joins them with
/// `redis-cli --cluster create`, and waits until every node reports
/// `cluster_state:ok`.
pub async fn redis_cluster(masters: usize) -> RedisCluster {
    let mut nodes = Vec::with_capacity(masters);
    for _ in 0..masters {
        // The cluster bus port is chosen too: port + 10000 may be taken.
        let bus = free_port().to_string();
        let port = free_port();
        let conf = format!("nodes-{port}.conf");
        nodes.push(
            redis_server_on(
                Some(port),
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "2000",
                ],
            )
            .await,
        );
    }
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port()))
        .collect();
    let mut args = vec!["--cluster", "create"];
    args.extend(addrs.iter().map(String::as_str));
    args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    let out = cli(nodes[0].port(), &args)
        .await
        .unwrap_or_else(|e| panic!("creating the cluster: {e}"));
    assert!(
        out.contains("All 16384 slots covered"),
        "creating the cluster: {out}"
    );
    for n in &nodes {
        wait_until("every cluster node to report cluster_state:ok", || async {
            cli(n.port(), &["CLUSTER", "INFO"])
                .await
                .is_ok_and(|i| i.contains("cluster_state:ok"))
        })
        .await;
    }
    RedisCluster { nodes }
}

/// A `redis-server` that speaks only TLS, with a certificate for
/// `127.0.0.1` signed by a throw-away CA.
#[derive(Debug)]
pub struct TlsRedisServer {
    /// The server; [`RedisServer::url`] is not for it, use
    /// [`TlsRedisServer::url`].
    pub server: RedisServer,
    /// The CA certificate (PEM) that signed the server's certificate: point
    /// `SSL_CERT_FILE` at it to trust the server.
    pub ca: PathBuf,
}

impl TlsRedisServer {
    /// `rediss://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.server.port())
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running openssl (install the openssl package)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts a TLS-only `redis-server` (clients need no certificate of their
/// own) and waits until it accepts connections. Certificates are made
/// with the `openssl` command in the server's temporary directory.
pub async fn redis_tls_server() -> TlsRedisServer {
    let port = free_port();
    let builder = Process::program("redis-server-tls", redis_server_path())
        .addr(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let dir = builder.dir().to_path_buf();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=busmq test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(&dir, &ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(&dir, &csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("writing server.ext");
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    let path = |f: &str| dir.join(f).display().to_string();
    let mut args = server_args(0, &dir);
    args.extend([
        "--tls-port".to_owned(),
        port.to_string(),
        "--tls-cert-file".to_owned(),
        path("server.pem"),
        "--tls-key-file".to_owned(),
        path("server.key"),
        "--tls-ca-cert-file".to_owned(),
        path("ca.pem"),
        "--tls-auth-clients".to_owned(),
        "no".to_owned(),
    ]);
    let process = builder.args(args).spawn();
    process.wait_ready().await;
    TlsRedisServer {
        ca: dir.join("ca.pem"),
        server: RedisServer { process },
    }
}
