//! What the cross-process tests share: a bus in real processes (a storage
//! process and a broker in front of it, or one `busmq serve`), and an SDK
//! client.

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;

use busmq_client::Bus;
use busmq_testkit::Process;
use busmq_testkit::deployment::{self, Deployment};

/// A bus in real processes, and an SDK client of it.
pub struct Cluster {
    pub bus: Bus,
    /// The process serving the broker API: `busmq-broker`, or `busmq serve`.
    pub broker: Process,
    /// The storage process of a split deployment.
    pub storage: Option<Process>,
    /// Where the storage API is served (by `busmq serve` itself when it is
    /// not split), for more brokers over the same store.
    pub storage_addr: SocketAddr,
}

/// Starts the bus the test's deployment asks for, memory backend, and
/// connects to it: by default (and for [`Deployment::Split`]) a
/// `busmq-storage` process and a `busmq-broker` in front of it; for
/// [`Deployment::InProcess`] one `busmq serve`, whose broker uses the store
/// in its own process.
pub async fn cluster() -> Cluster {
    let (broker, storage, storage_addr) = match deployment::current().unwrap_or(Deployment::Split) {
        Deployment::Split => {
            let storage = busmq_testkit::storage().await;
            let broker = busmq_testkit::broker(storage.addr()).await;
            let addr = storage.addr();
            (broker, Some(storage), addr)
        }
        Deployment::InProcess => {
            let (serve, storage_addr) = busmq_testkit::serve("memory").await;
            (serve, None, storage_addr)
        }
    };
    let bus = Bus::connect(broker.url()).await.expect("connect to broker");
    Cluster {
        bus,
        broker,
        storage,
        storage_addr,
    }
}

/// A broker in front of `storage` whose reliable locks lapse 1 s after it
/// dies (5 s by default), so a consumer gets its queue back soon after the
/// broker restarts.
pub async fn broker_with_short_lock_lease(storage: &Process) -> Process {
    let builder = Process::builder("busmq-broker");
    let addr = builder.listen_addr();
    let p = builder
        .args(["--listen", &addr.to_string()])
        .args(["--storage", &storage.url()])
        .args(["--reliable-lease-ms", "1000"])
        .spawn();
    p.wait_ready().await;
    p
}
