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
/// reads and acks. Lease mode gets its own run, since leases and a
/// reliable consumer exclude each other and would starve one another's
/// operations in a single mix.
mod differential {
    use super::*;
    use busmq_core::Limits;
    use busmq_storage::memory::MemoryStorage;
    use busmq_storage::{
        Error, LeaseToken, Leases, QueueName, ReliableLock, Settled, Settlement, TakeMode,
    };
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

    /// [`show`] with the whole error: lease mode's refusals share codes
    /// (outstanding leases and a reliable consumer are both
    /// FailedPrecondition, an expired and an unknown token differ only in
    /// variant), so the code alone would hide a wrong one.
    fn exact<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
        match r {
            Ok(v) => format!("{v:?}"),
            Err(e) => format!("error {e:?}"),
        }
    }

    /// How far apart the two stores' `next_expiry` may be and still name
    /// the same lease: the calls run back to back on two clocks (Redis's
    /// server time, tokio's), milliseconds apart, while visibilities differ
    /// by `VISIBILITIES`' steps of 300 s, so naming a different lease would
    /// be minutes off.
    const EXPIRY_SLACK: Duration = Duration::from_secs(10);

    /// Leases whose visibility never runs out during a run (under a
    /// minute), so no answer depends on wall time.
    const VISIBILITIES: [u64; 3] = [600, 900, 1200];

    /// The two answers of a lease call, as [`exact`] shows them, but with
    /// `next_expiry` (a countdown from each call's own clock reading) shown
    /// as `~` when the two are within [`EXPIRY_SLACK`], and in full when
    /// they are not, so the comparison fails on it.
    fn show_leases(a: &Result<Leases, Error>, b: &Result<Leases, Error>) -> (String, String) {
        let close = match (a, b) {
            (Ok(a), Ok(b)) => match (a.next_expiry, b.next_expiry) {
                (Some(x), Some(y)) => x.abs_diff(y) <= EXPIRY_SLACK,
                _ => false,
            },
            _ => false,
        };
        let one = |r: &Result<Leases, Error>| match r {
            Ok(l) if close => format!("{:?} next_expiry ~", l.messages),
            Ok(l) => format!("{:?} next_expiry {:?}", l.messages, l.next_expiry),
            Err(e) => format!("error {e:?}"),
        };
        (one(a), one(b))
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

    const OWNERS: [&str; 3] = ["a", "b", "c"];

    /// Moves `owner`'s tokens from `live` to `returned`, after a release.
    fn release(live: &mut Vec<(&str, LeaseToken)>, returned: &mut Vec<LeaseToken>, owner: &str) {
        live.retain(|&(o, t)| {
            if o == owner {
                returned.push(t);
            }
            o != owner
        });
    }

    /// Lease mode against the memory store: leases by a few owners,
    /// settles by current, stale and made-up tokens, releases, max
    /// deliveries changing under them (so nacks, releases and reliable
    /// restarts dead-letter into `<queue>.dlq`, whose contents and info are
    /// compared too), mixed with unreliable and reliable takes, reads,
    /// acks and flushes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leases_match_the_memory_store() {
        let server = SERVER.get_or_init(rk::redis_server).await;
        let redis = open(&server.url()).await;
        let memory: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        // Two owners, so a second reliable consumer is refused while the
        // first holds the queue.
        let locks = ["r", "s"].map(|owner| ReliableLock {
            owner: owner.into(),
            lease: Duration::from_secs(600),
        });
        for round in 0..5u64 {
            let q = QueueName::parse(&format!("differential-leases.{round}"), &Limits::default())
                .unwrap();
            let dlq = q.dead_letters();
            let mut rng = Rng(0xd1b5_4a32_d192_ed03 ^ (round + 1));
            let mut next = 1u64;
            // Tokens of unsettled leases, by owner (per memory's answers,
            // which the comparison holds Redis to), so most settles name a
            // real delivery. Tokens nacked or released back to the queue
            // name a delivery that is over, which a settle must call
            // expired, not unknown; `seen` keeps every token handed out.
            let mut live: Vec<(&str, LeaseToken)> = Vec::new();
            let mut returned: Vec<LeaseToken> = Vec::new();
            let mut seen: Vec<LeaseToken> = Vec::new();
            // Which of `locks` holds the queue, per memory's answers.
            let mut reliable: Option<usize> = None;
            let mut last_pending = 0u64;
            let start_max = [0, 1, 2, 3, 2][round as usize];
            for store in [&redis, &memory] {
                store
                    .attach(&q, Some(Duration::from_secs(600)))
                    .await
                    .unwrap();
                store.set_max_deliveries(&q, start_max).await.unwrap();
            }
            for step in 0..300 {
                let op = rng.below(100);
                let (a, b) = match op {
                    0..=17 => {
                        let n = 1 + rng.below(8);
                        let batch: Vec<Bytes> = (0..n)
                            .map(|i| Bytes::from(format!("p{}-{}", next + i, rng.below(1000))))
                            .collect();
                        next += n;
                        (
                            exact(redis.push(&q, batch.clone()).await),
                            exact(memory.push(&q, batch).await),
                        )
                    }
                    18..=32 => {
                        let owner = OWNERS[rng.below(3) as usize];
                        let max = rng.below(12) as u32;
                        // Now and then a refused visibility, to compare the
                        // refusal too.
                        let visibility = match rng.below(40) {
                            0 => Duration::ZERO,
                            _ => Duration::from_secs(VISIBILITIES[rng.below(3) as usize]),
                        };
                        let a = redis.lease(&q, owner, max, visibility).await;
                        let b = memory.lease(&q, owner, max, visibility).await;
                        if let Ok(l) = &b {
                            for m in &l.messages {
                                live.push((owner, m.token()));
                                seen.push(m.token());
                            }
                        }
                        show_leases(&a, &b)
                    }
                    33..=56 => {
                        let settlement = if op <= 44 {
                            Settlement::Ack
                        } else {
                            Settlement::Nack
                        };
                        let token = match rng.below(10) {
                            0..=4 if !live.is_empty() => {
                                live[rng.below(live.len() as u64) as usize].1
                            }
                            // The latest returns, whose messages are the
                            // likeliest still stored (not acked since).
                            0..=6 if !returned.is_empty() => {
                                let back = rng.below(returned.len().min(4) as u64) as usize;
                                returned[returned.len() - 1 - back]
                            }
                            0..=7 if !seen.is_empty() => {
                                seen[rng.below(seen.len() as u64) as usize]
                            }
                            // Made up: often never delivered, sometimes
                            // invalid (id or attempt 0).
                            _ => LeaseToken {
                                id: rng.below(next + 3),
                                attempt: rng.below(5) as u32,
                            },
                        };
                        let a = redis.settle(&q, token, settlement).await;
                        let b = memory.settle(&q, token, settlement).await;
                        if b.is_ok() {
                            live.retain(|(_, t)| *t != token);
                        }
                        if b == Ok(Settled::Requeued) {
                            returned.push(token);
                        }
                        (exact(a), exact(b))
                    }
                    57..=61 => {
                        let owner = ["a", "b", "c", "nobody"][rng.below(4) as usize];
                        let a = redis.release_leases(&q, owner).await;
                        let b = memory.release_leases(&q, owner).await;
                        if b.is_ok() {
                            release(&mut live, &mut returned, owner);
                        }
                        (exact(a), exact(b))
                    }
                    62..=64 => {
                        // Low limits, mostly set: the dead-letter queue
                        // fills only once a message used them up.
                        let max = [0, 1, 1, 2, 2, 3][rng.below(6) as usize];
                        (
                            exact(redis.set_max_deliveries(&q, max).await),
                            exact(memory.set_max_deliveries(&q, max).await),
                        )
                    }
                    65..=72 => {
                        // Pending takes beside outstanding leases (a
                        // lapsed lock, a client with none) must be refused
                        // alike by both.
                        let mode = if op <= 68 {
                            TakeMode::Remove
                        } else {
                            TakeMode::Pending
                        };
                        let max = rng.below(8) as u32;
                        let a = redis.take(&q, max, mode).await;
                        let b = memory.take(&q, max, mode).await;
                        if let (TakeMode::Pending, Ok(Some(last))) =
                            (mode, b.as_ref().map(|m| m.last()))
                        {
                            last_pending = last.id;
                        }
                        (exact(a), exact(b))
                    }
                    73..=75 => {
                        // Around the latest pending id, where acks remove
                        // something; any id would mostly be unknown.
                        let id = match rng.below(3) {
                            0 => rng.below(next + 3),
                            _ => (last_pending + 2).saturating_sub(rng.below(6)),
                        };
                        (
                            exact(redis.ack(&q, id).await),
                            exact(memory.ack(&q, id).await),
                        )
                    }
                    76..=81 => {
                        let from = rng.below(next + 3);
                        let max = rng.below(30) as u32;
                        (
                            exact(redis.read(&q, from, max).await),
                            exact(memory.read(&q, from, max).await),
                        )
                    }
                    82..=84 => {
                        // Half the time every lease consumer leaves first,
                        // as in a switch to reliable mode: otherwise some
                        // lease is nearly always outstanding, and reliable
                        // mode would hardly ever start.
                        let mut released = (String::new(), String::new());
                        if rng.below(2) == 0 {
                            for owner in OWNERS {
                                let a = redis.release_leases(&q, owner).await;
                                let b = memory.release_leases(&q, owner).await;
                                if b.is_ok() {
                                    release(&mut live, &mut returned, owner);
                                }
                                released.0 += &format!("{} ", exact(a));
                                released.1 += &format!("{} ", exact(b));
                            }
                        }
                        let which = rng.below(2) as usize;
                        let last = match rng.below(4) {
                            0 => rng.below(next + 3),
                            _ => 0,
                        };
                        let a = redis.begin_reliable(&q, &locks[which], last).await;
                        let b = memory.begin_reliable(&q, &locks[which], last).await;
                        if b.is_ok() {
                            reliable = Some(which);
                        }
                        (released.0 + &exact(a), released.1 + &exact(b))
                    }
                    85..=88 => {
                        // Mostly the holder, so lease mode gets the queue
                        // back; sometimes the other owner, who holds nothing.
                        let which = match reliable {
                            Some(holder) if rng.below(4) > 0 => holder,
                            _ => rng.below(2) as usize,
                        };
                        let a = redis.end_reliable(&q, &locks[which]).await;
                        let b = memory.end_reliable(&q, &locks[which]).await;
                        if b == Ok(true) {
                            reliable = None;
                        }
                        (exact(a), exact(b))
                    }
                    89 => {
                        let lock = &locks[rng.below(2) as usize];
                        (
                            exact(redis.renew_reliable(&q, lock).await),
                            exact(memory.renew_reliable(&q, lock).await),
                        )
                    }
                    90 => {
                        let a = redis.flush(&q).await;
                        let b = memory.flush(&q).await;
                        if b.is_ok() {
                            live.clear();
                        }
                        (exact(a), exact(b))
                    }
                    91..=93 => {
                        let from = rng.below(8);
                        (
                            exact(redis.read(&dlq, from, 1000).await),
                            exact(memory.read(&dlq, from, 1000).await),
                        )
                    }
                    94 => {
                        let max = rng.below(4) as u32;
                        (
                            exact(redis.take(&dlq, max, TakeMode::Remove).await),
                            exact(memory.take(&dlq, max, TakeMode::Remove).await),
                        )
                    }
                    // The next dead letter then creates the dlq afresh,
                    // numbering from 1 again.
                    95 => (
                        exact(redis.close(&dlq).await),
                        exact(memory.close(&dlq).await),
                    ),
                    96..=97 => (exact(redis.info(&q).await), exact(memory.info(&q).await)),
                    _ => (
                        exact(redis.info(&dlq).await),
                        exact(memory.info(&dlq).await),
                    ),
                };
                assert_eq!(a, b, "round {round} step {step} (op {op}): redis vs memory");
            }
            // Whatever the steps left behind, in full.
            for name in [&q, &dlq] {
                assert_eq!(
                    exact(redis.read(name, 0, 100_000).await),
                    exact(memory.read(name, 0, 100_000).await),
                    "round {round}: final contents of {name}"
                );
                assert_eq!(
                    exact(redis.info(name).await),
                    exact(memory.info(name).await),
                    "round {round}: final info of {name}"
                );
            }
        }
    }
}
