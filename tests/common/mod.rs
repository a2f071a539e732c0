//! What the cross-process tests share: a storage process, a broker in
//! front of it, and an SDK client.

// Each test binary uses a part of it.
#![allow(dead_code)]

use busmq_client::Bus;
use busmq_testkit::Process;

/// A storage process, a broker process in front of it, and an SDK client.
pub struct Cluster {
    pub bus: Bus,
    pub broker: Process,
    pub storage: Process,
}

/// Starts a storage (memory backend) and a broker, and connects to it.
pub async fn cluster() -> Cluster {
    let storage = busmq_testkit::storage().await;
    let broker = busmq_testkit::broker(storage.addr()).await;
    let bus = Bus::connect(broker.url()).await.expect("connect to broker");
    Cluster {
        bus,
        broker,
        storage,
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
