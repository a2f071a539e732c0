//! The busmq HTTP gateway: the message-queue HTTP API (`POST /message/new`,
//! `GET /message/next`, `POST /message/:id/status/done`, and the same under
//! `/queues/:name/`) over a busmq broker, plus `/healthz` and `/readyz`;
//! and the `/v1` REST API ([`v1`]: queues in every consume mode, pub/sub as
//! Server-Sent Events, persistable objects, a WebSocket) with
//! `GET /openapi.json` describing every route.
//!
//! A thin adapter: every request becomes SDK calls to the broker
//! (`busmq-client`), and every queue rule (order, leases, their expiry and
//! return to the front of the queue) stays in the broker and its store.
//! The gateway keeps only what HTTP lacks: the attempt of each lease it
//! handed out ([`leases`]), and which queues it attached to. See
//! `docs/http.md`.

#![warn(missing_docs)]

mod args;
pub mod auth;
pub mod error;
pub mod info;
pub mod leases;
pub mod observe;
mod params;
pub mod payload;
mod routes;
mod settle;
mod take;
pub mod v1;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use busmq_client::{AttachOptions, Bus, Queue, Reason};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use args::{GatewayArgs, HttpListen};
pub use error::HttpError;
pub use routes::router;

/// The longest `?wait=SECONDS` of a long poll; a longer one waits this
/// long. Below the idle timeouts of common proxies and load balancers (60 s),
/// so a waiting request is not cut off on the way.
pub const MAX_WAIT: Duration = Duration::from_secs(20);

/// The default body limit (`--max-body-bytes`): room for a message at the
/// broker's default limit (1 MiB) as JSON text with some escaping.
pub const DEFAULT_MAX_BODY_BYTES: usize = 2 << 20;

/// The default bound of the lease book (`--max-leases`).
pub const DEFAULT_MAX_LEASES: usize = 1_000_000;

/// How the gateway serves.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a message handed out by `GET /message/next` stays leased
    /// before it goes back to the front of its queue.
    pub visibility_timeout: Duration,
    /// The queue of the routes without `/queues/:name`.
    pub default_queue: String,
    /// The largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// The most leases tracked at once for id-only dones (503 above).
    pub max_leases: usize,
    /// The bearer token every request but `/healthz` and `/readyz` must
    /// carry; none by default.
    pub token: auth::Token,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            visibility_timeout: Duration::from_secs(30),
            default_queue: "default".to_owned(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_leases: DEFAULT_MAX_LEASES,
            token: auth::Token::new(None),
        }
    }
}

/// Everything a request handler shares: the bus, the lease book and the
/// queues attached so far.
#[derive(Debug)]
pub struct Gateway {
    bus: Bus,
    config: Config,
    leases: leases::LeaseBook,
    /// Queues this process attached to. The gateway never detaches: a
    /// queue used over HTTP must not expire with its messages because no
    /// SDK client happens to be attached (the message-queue server kept its
    /// queue for good).
    attached: Mutex<HashSet<String>>,
    shutdown: CancellationToken,
}

impl Gateway {
    /// A gateway over `bus`, ready while its broker answers the health
    /// check. Long polls give up when `shutdown` fires.
    pub fn new(bus: Bus, config: Config, shutdown: CancellationToken) -> Gateway {
        Gateway {
            bus,
            leases: leases::LeaseBook::new(config.max_leases),
            config,
            attached: Mutex::new(HashSet::new()),
            shutdown,
        }
    }

    /// The configuration it serves with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn is_attached(&self, name: &str) -> bool {
        self.attached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
    }

    fn set_attached(&self, name: &str, attached: bool) {
        let mut set = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        if attached {
            set.insert(name.to_owned());
        } else {
            set.remove(name);
        }
    }

    /// The queue `name`, attached by this process (once): the broker
    /// creates it on first use, and checks the name.
    async fn queue(&self, name: &str) -> Result<Queue, busmq_client::Error> {
        let queue = self.bus.queue(name);
        if !self.is_attached(name) {
            queue.attach(AttachOptions::default()).await?;
            self.set_attached(name, true);
        }
        Ok(queue)
    }

    /// Runs `op` on the attached queue `name`; when the queue vanished
    /// since it was attached (closed by a client, or a broker over a memory
    /// store restarted), attaches again and runs it once more.
    async fn with_queue<T, F, Fut>(&self, name: &str, op: F) -> Result<T, busmq_client::Error>
    where
        F: Fn(Queue) -> Fut,
        Fut: Future<Output = Result<T, busmq_client::Error>>,
    {
        let queue = self.queue(name).await?;
        match op(queue).await {
            Err(e) if e.reason() == Some(Reason::QueueNotFound) => {
                self.set_attached(name, false);
                let queue = self.queue(name).await?;
                op(queue).await
            }
            other => other,
        }
    }
}

/// The bus of a gateway: the broker at `url`, connected lazily, so the
/// gateway starts (and `/healthz` answers) while the broker is still down
/// and each request says so with a 503 until it is up. No stream
/// reconnects: a request whose broker went away answers 503 now rather
/// than after the SDK's retry window.
///
/// # Errors
///
/// When `url` is not a broker URL.
pub fn connect(url: &str) -> Result<Bus, busmq_client::Error> {
    Ok(Bus::connect_lazy(url)?.reconnect(busmq_client::Reconnect {
        enabled: false,
        give_up_after: Duration::ZERO,
    }))
}

/// The broker's gRPC health check through `bus`, within `timeout`:
/// `Ok(())` when it answers SERVING, else why not.
pub async fn broker_ready(bus: &Bus, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, bus.health("")).await {
        Err(_) => Err(format!("no health answer within {timeout:?}")),
        Ok(Err(e)) => Err(format!("health check failed: {e}")),
        Ok(Ok(busmq_client::Health::Serving)) => Ok(()),
        Ok(Ok(other)) => Err(format!("the broker reports {}", other.as_str())),
    }
}

/// Serves `gateway` on `listener` until `shutdown` fires, then lets the
/// requests in flight finish (long polls end at once with 204).
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>) -> std::io::Result<()> {
    let shutdown = gateway.shutdown.clone();
    axum::serve(listener, router(gateway))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
