//! The conformance suite over the Redis store, against real `redis-server`
//! processes in each layout: one server, three shards, a Sentinel set and
//! a three-master Cluster.
//!
//! Each layout is started once per test binary (by the first test that
//! needs it) and kept in a `static`; the testkit's watchdogs stop the
//! processes when the binary exits. Every test opens its own store (its own
//! runtime) and the suite's queue names are unique, so tests share the
//! servers safely.

use std::sync::Arc;
use std::time::Duration;

use busmq_storage::Storage;
use busmq_storage::redis::{RedisConfig, RedisStorage};
use busmq_testkit::redis::{self as rk, RedisCluster, RedisServer, SentinelSet};
use tokio::sync::OnceCell;

/// Opens a store on `spec` and waits until it is connected.
async fn open(spec: &str) -> Arc<dyn Storage> {
    let config = RedisConfig::parse(spec).expect("a valid spec");
    let store = RedisStorage::new(config).expect("a store");
    assert!(
        store.wait_connected(Duration::from_secs(10)).await,
        "not connected to {spec} within 10 s"
    );
    Arc::new(store)
}

mod standalone {
    use super::*;

    static SERVER: OnceCell<RedisServer> = OnceCell::const_new();

    async fn store() -> Arc<dyn Storage> {
        let server = SERVER.get_or_init(rk::redis_server).await;
        open(&server.url()).await
    }

    busmq_storage::conformance_tests!(store());
}

mod sharded {
    use super::*;

    static SHARDS: OnceCell<Vec<RedisServer>> = OnceCell::const_new();

    async fn store() -> Arc<dyn Storage> {
        let shards = SHARDS.get_or_init(|| rk::redis_shards(3)).await;
        let spec: Vec<String> = shards.iter().map(RedisServer::url).collect();
        open(&spec.join(",")).await
    }

    busmq_storage::conformance_tests!(store());
}

mod sentinel {
    use super::*;

    static SET: OnceCell<SentinelSet> = OnceCell::const_new();

    async fn store() -> Arc<dyn Storage> {
        let set = SET.get_or_init(rk::sentinel_set).await;
        open(&set.spec()).await
    }

    busmq_storage::conformance_tests!(store());
}

mod cluster {
    use super::*;

    static CLUSTER: OnceCell<RedisCluster> = OnceCell::const_new();

    async fn store() -> Arc<dyn Storage> {
        let cluster = CLUSTER.get_or_init(|| rk::redis_cluster(3)).await;
        open(&cluster.spec()).await
    }

    busmq_storage::conformance_tests!(store());
}
