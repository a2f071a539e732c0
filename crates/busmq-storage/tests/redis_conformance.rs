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

/// Random operations applied to the Redis store and to the memory store
/// (the reference semantics) give the same answers: ids, payloads, counts
/// and error codes. Mixing take modes, acks, discards and flushes leaves
/// gaps in the ids of both lists, which exercises the binary search of
/// reads and acks.
mod differential {
    use super::*;
    use busmq_core::Limits;
    use busmq_storage::memory::MemoryStorage;
    use busmq_storage::{QueueName, ReliableLock, TakeMode};
    use bytes::Bytes;

    static SERVER: OnceCell<RedisServer> = OnceCell::const_new();

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
        }
    }

    fn show<T: std::fmt::Debug>(r: Result<T, busmq_storage::Error>) -> String {
        match r {
            Ok(v) => format!("{v:?}"),
            Err(e) => format!("error {:?}", e.code()),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn matches_the_memory_store() {
        let server = SERVER.get_or_init(rk::redis_server).await;
        let redis = open(&server.url()).await;
        let memory: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let lock = ReliableLock {
            owner: "diff".into(),
            lease: Duration::from_secs(60),
        };
        for round in 0..4u64 {
            let q = QueueName::parse(&format!("differential.{round}"), &Limits::default()).unwrap();
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (round + 1));
            let mut next = 1u64;
            for store in [&redis, &memory] {
                store
                    .attach(&q, Some(Duration::from_secs(600)))
                    .await
                    .unwrap();
            }
            for step in 0..400 {
                let op = rng.below(100);
                let (a, b) = match op {
                    0..=29 => {
                        let n = 1 + rng.below(20);
                        let batch: Vec<Bytes> = (0..n)
                            .map(|i| Bytes::from(format!("p{}-{}", next + i, rng.below(1000))))
                            .collect();
                        next += n;
                        (
                            show(redis.push(&q, batch.clone()).await),
                            show(memory.push(&q, batch).await),
                        )
                    }
                    30..=44 => {
                        let max = rng.below(30) as u32;
                        (
                            show(redis.take(&q, max, TakeMode::Remove).await),
                            show(memory.take(&q, max, TakeMode::Remove).await),
                        )
                    }
                    45..=59 => {
                        let max = rng.below(30) as u32;
                        (
                            show(redis.take(&q, max, TakeMode::Pending).await),
                            show(memory.take(&q, max, TakeMode::Pending).await),
                        )
                    }
                    60..=69 => {
                        let id = rng.below(next + 5);
                        (
                            show(redis.ack(&q, id).await),
                            show(memory.ack(&q, id).await),
                        )
                    }
                    70..=84 => {
                        let from = rng.below(next + 5);
                        let max = rng.below(40) as u32;
                        (
                            show(redis.read(&q, from, max).await),
                            show(memory.read(&q, from, max).await),
                        )
                    }
                    85..=91 => {
                        let last = if rng.below(2) == 0 {
                            0
                        } else {
                            rng.below(next + 5)
                        };
                        (
                            show(redis.begin_reliable(&q, &lock, last).await),
                            show(memory.begin_reliable(&q, &lock, last).await),
                        )
                    }
                    92..=93 => (show(redis.flush(&q).await), show(memory.flush(&q).await)),
                    _ => (show(redis.info(&q).await), show(memory.info(&q).await)),
                };
                assert_eq!(a, b, "round {round} step {step} (op {op}): redis vs memory");
            }
        }
    }
}
