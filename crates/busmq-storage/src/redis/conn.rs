//! Connections to Redis: one supervised connection per shard that fails
//! fast while Redis is unreachable and reconnects in the background with
//! backoff, re-resolving the master through the sentinels on every
//! reconnect.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture,
    ServerErrorKind, Value,
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::config::{Endpoint, describe};
use crate::Error;

/// How long establishing one connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long Redis may take to answer one command.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Backstop on a whole call (a script and its reload on NOSCRIPT).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(4);
/// First delay between reconnection attempts; doubles up to the maximum.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How to (re)connect to one shard.
pub enum Connector {
    /// One server at a fixed address.
    Direct(Endpoint),
    /// The master of a Sentinel set, asked of the sentinels on every
    /// connect.
    Sentinel {
        sentinels: Vec<Endpoint>,
        master: String,
        node: Endpoint,
    },
    /// A Redis Cluster through its seed nodes.
    Cluster(Vec<Endpoint>),
}

impl Connector {
    /// What to call this shard in logs and errors.
    pub fn label(&self) -> String {
        match self {
            Connector::Direct(e) => e.redacted().to_owned(),
            Connector::Sentinel {
                sentinels, master, ..
            } => format!(
                "master {master:?} via sentinels {}",
                sentinels
                    .iter()
                    .map(|s| s.redacted())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Connector::Cluster(nodes) => format!(
                "cluster via {}",
                nodes
                    .iter()
                    .map(|s| s.redacted())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    /// A fresh data connection; for Sentinel, to the master the sentinels
    /// name, checked to be a master.
    async fn connect(&self) -> Result<Conn, String> {
        match self {
            Connector::Direct(e) => connect_single(e).await.map(Conn::Single),
            Connector::Sentinel { .. } => {
                let (conn, _) = self.sentinel_master().await?;
                Ok(Conn::Single(conn))
            }
            Connector::Cluster(nodes) => {
                let client = ClusterClientBuilder::new(nodes.iter().map(|n| n.info.clone()))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(2)
                    .min_retry_wait(50)
                    .max_retry_wait(500)
                    .build()
                    .map_err(|e| describe(&e))?;
                let conn = tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_connection())
                    .await
                    .map_err(|_| format!("no answer within {:?}", CONNECT_TIMEOUT * 2))?
                    .map_err(|e| describe(&e))?;
                Ok(Conn::Cluster(conn))
            }
        }
    }

    /// Asks each sentinel in turn where the master is, connects to it and
    /// checks with ROLE that it is a master (not a demoted one).
    async fn sentinel_master(&self) -> Result<(MultiplexedConnection, Endpoint), String> {
        let Connector::Sentinel {
            sentinels,
            master,
            node,
        } = self
        else {
            return Err("not a sentinel layout".into());
        };
        let mut errors = Vec::new();
        for sentinel in sentinels {
            match ask_sentinel(sentinel, master).await {
                Ok((host, port)) => {
                    let endpoint = node.at(&host, port);
                    match connect_single(&endpoint).await {
                        Ok(mut conn) => match role(&mut conn).await {
                            Ok(role) if role == "master" => return Ok((conn, endpoint)),
                            Ok(role) => errors.push(format!(
                                "{} named by {} is a {role} (failover in progress?)",
                                endpoint.redacted(),
                                sentinel.redacted()
                            )),
                            Err(e) => errors.push(format!("{}: {e}", endpoint.redacted())),
                        },
                        Err(e) => errors.push(format!("{}: {e}", endpoint.redacted())),
                    }
                }
                Err(e) => errors.push(format!("sentinel {}: {e}", sentinel.redacted())),
            }
        }
        Err(errors.join("; "))
    }

    /// Endpoints a pub/sub connection may use, in order of preference.
    pub async fn pubsub_endpoints(&self) -> Result<Vec<Endpoint>, String> {
        match self {
            Connector::Direct(e) => Ok(vec![e.clone()]),
            Connector::Sentinel { .. } => {
                let (_, endpoint) = self.sentinel_master().await?;
                Ok(vec![endpoint])
            }
            // Classic PUBLISH reaches every node of a cluster: any one will do.
            Connector::Cluster(nodes) => Ok(nodes.clone()),
        }
    }
}

fn connection_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
}

pub async fn connect_single(e: &Endpoint) -> Result<MultiplexedConnection, String> {
    let client = Client::open(e.info.clone()).map_err(|e| describe(&e))?;
    tokio::time::timeout(
        CONNECT_TIMEOUT + Duration::from_millis(500),
        client.get_multiplexed_async_connection_with_config(&connection_config()),
    )
    .await
    .map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"))?
    .map_err(|e| describe(&e))
}

async fn role(conn: &mut MultiplexedConnection) -> Result<String, String> {
    let reply: Value = ::redis::cmd("ROLE")
        .query_async(conn)
        .await
        .map_err(|e| describe(&e))?;
    match reply {
        Value::Array(items) => match items.first() {
            Some(Value::BulkString(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
            Some(Value::SimpleString(s)) => Ok(s.clone()),
            _ => Err("unexpected ROLE reply".into()),
        },
        _ => Err("unexpected ROLE reply".into()),
    }
}

async fn ask_sentinel(sentinel: &Endpoint, master: &str) -> Result<(String, u16), String> {
    let mut conn = connect_single(sentinel).await?;
    let reply: Option<Vec<String>> = ::redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master)
        .query_async(&mut conn)
        .await
        .map_err(|e| describe(&e))?;
    match reply.as_deref() {
        Some([host, port]) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("answered a bad port {port:?}"))?;
            Ok((host.clone(), port))
        }
        Some(_) => Err("answered an unexpected reply".into()),
        None => Err(format!("does not know a master named {master:?}")),
    }
}

/// Opens a data connection to the first reachable of `endpoints`: on a
/// Cluster, the node [`open_pubsub`] picks too.
pub async fn connect_first(endpoints: &[Endpoint]) -> Result<MultiplexedConnection, String> {
    let mut errors = Vec::new();
    for e in endpoints {
        match connect_single(e).await {
            Ok(conn) => return Ok(conn),
            Err(err) => errors.push(format!("{}: {err}", e.redacted())),
        }
    }
    Err(errors.join("; "))
}

/// Opens a pub/sub connection to the first reachable of `endpoints`.
pub async fn open_pubsub(endpoints: &[Endpoint]) -> Result<(PubSub, Endpoint), String> {
    let mut errors = Vec::new();
    for e in endpoints {
        let client = match Client::open(e.info.clone()) {
            Ok(c) => c,
            Err(err) => {
                errors.push(format!("{}: {}", e.redacted(), describe(&err)));
                continue;
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => return Ok((pubsub, e.clone())),
            Ok(Err(err)) => errors.push(format!("{}: {}", e.redacted(), describe(&err))),
            Err(_) => errors.push(format!(
                "{}: no answer within {CONNECT_TIMEOUT:?}",
                e.redacted()
            )),
        }
    }
    Err(errors.join("; "))
}

/// A data connection: one server or a cluster. Cheap to clone; clones
/// share the connection.
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What a Redis error means for the caller and for the connection.
pub struct Classified {
    /// The error to return.
    pub error: Error,
    /// The connection is unusable (dropped, timed out, talking to a
    /// demoted master): reconnect, re-resolving the master.
    pub reconnect: bool,
}

/// Maps a Redis error to a busmq error; never panics on anything Redis
/// returns.
pub fn classify(label: &str, e: &RedisError) -> Classified {
    let code = e.code().unwrap_or("");
    let detail = describe(e);
    let unavailable = |reconnect| Classified {
        error: Error::Unavailable(format!("Redis at {label}: {detail}")),
        reconnect,
    };
    match code {
        // A demoted master, a master without its replicas, a blocked call
        // cut short by a failover: find the master again.
        "READONLY" | "MASTERDOWN" | "UNBLOCKED" => return unavailable(true),
        // Transient states of a healthy server: retry later on the same
        // connection.
        "LOADING" | "TRYAGAIN" | "CLUSTERDOWN" | "BUSY" | "NOREPLICAS" | "OOM" => {
            return unavailable(false);
        }
        "NOAUTH" | "WRONGPASS" | "NOPERM" => return unavailable(false),
        _ => {}
    }
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
    {
        return unavailable(true);
    }
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::ReadOnly)
        | ErrorKind::Server(ServerErrorKind::MasterDown) => unavailable(true),
        ErrorKind::Server(ServerErrorKind::BusyLoading)
        | ErrorKind::Server(ServerErrorKind::TryAgain)
        | ErrorKind::Server(ServerErrorKind::ClusterDown)
        | ErrorKind::ClusterConnectionNotFound
        | ErrorKind::AuthenticationFailed => unavailable(false),
        _ => Classified {
            error: Error::Internal(format!("Redis at {label}: {detail}")),
            reconnect: false,
        },
    }
}

struct State {
    /// The live connection and its generation.
    conn: Option<(u64, Conn)>,
    generation: u64,
    /// Why the last connection attempt or call failed.
    last_error: Option<String>,
    /// A connection attempt is under way.
    attempting: bool,
}

/// One shard: its connector and its supervised connection.
pub struct Node {
    label: String,
    connector: Connector,
    state: Mutex<State>,
    /// Wakes the supervisor when a connection broke.
    broken: Notify,
    /// Ticks after every connection attempt.
    attempts: watch::Sender<u64>,
}

impl Node {
    /// A node with no connection yet; [`Node::supervise`] makes one.
    pub fn new(connector: Connector) -> Arc<Self> {
        Arc::new(Node {
            label: connector.label(),
            connector,
            state: Mutex::new(State {
                conn: None,
                generation: 0,
                last_error: None,
                // The supervisor starts with an attempt: calls made before
                // it finishes wait for it.
                attempting: true,
            }),
            broken: Notify::new(),
            attempts: watch::channel(0).0,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What to call this shard in logs and errors.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Whether a connection is up.
    pub fn connected(&self) -> bool {
        self.state().conn.is_some()
    }

    /// The live connection. Without one, waits for a connection attempt
    /// under way (bounded by the connect timeout) and otherwise fails at
    /// once with UNAVAILABLE: nothing is queued while Redis is away.
    pub async fn conn(&self) -> Result<(u64, Conn), Error> {
        let mut attempts = self.attempts.subscribe();
        {
            let state = self.state();
            if state.conn.is_some() || !state.attempting {
                drop(state);
                return self.conn_now();
            }
        }
        let _ = tokio::time::timeout(CONNECT_TIMEOUT * 2, attempts.changed()).await;
        self.conn_now()
    }

    fn conn_now(&self) -> Result<(u64, Conn), Error> {
        let state = self.state();
        match &state.conn {
            Some((generation, conn)) => Ok((*generation, conn.clone())),
            None => Err(Error::Unavailable(format!(
                "Redis at {} is unreachable{}",
                self.label,
                state
                    .last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_else(|| " (connecting)".into())
            ))),
        }
    }

    /// Drops connection `generation` (if still current) and asks the
    /// supervisor for a new one.
    pub fn mark_broken(&self, generation: u64, why: &str) {
        let mut state = self.state();
        if state.conn.as_ref().is_some_and(|(g, _)| *g == generation) {
            tracing::warn!(redis = %self.label, "Redis connection lost: {why}; reconnecting");
            state.conn = None;
            state.last_error = Some(why.to_owned());
            // The supervisor reconnects at once; calls meanwhile wait for it.
            state.attempting = true;
            drop(state);
            self.broken.notify_one();
        }
    }

    /// Keeps a connection up until `cancel`: connects, and reconnects with
    /// backoff whenever a call reports the connection broken.
    pub async fn supervise(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        let mut failures: u32 = 0;
        loop {
            if self.connected() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.broken.notified() => continue,
                }
            }
            self.state().attempting = true;
            let attempt = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.connector.connect() => r,
            };
            match attempt {
                Ok(conn) => {
                    if failures > 0 {
                        tracing::info!(redis = %self.label, "connected to Redis after {failures} failed attempts");
                    } else {
                        tracing::info!(redis = %self.label, "connected to Redis");
                    }
                    let mut state = self.state();
                    state.generation += 1;
                    state.conn = Some((state.generation, conn));
                    state.last_error = None;
                    state.attempting = false;
                    drop(state);
                    self.attempts.send_modify(|n| *n += 1);
                    backoff = MIN_BACKOFF;
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    // Loud at first and then every ~30 attempts; quiet in between.
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(redis = %self.label,
                            "cannot reach Redis at {}: {e}; retrying every {:?} at most",
                            self.label, MAX_BACKOFF);
                    } else {
                        tracing::debug!(redis = %self.label, "cannot reach Redis: {e}");
                    }
                    {
                        let mut state = self.state();
                        state.last_error = Some(e);
                        state.attempting = false;
                    }
                    self.attempts.send_modify(|n| *n += 1);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
