//! The Redis store under failure and change, against real `redis-server`
//! processes: a forced Sentinel failover mid-load, a fourth shard added
//! while producers and consumers run, key hygiene (nothing left once every
//! ttl ran out), Redis killed and restarted mid-run, and a storage service
//! started before its Redis. Every wait is bounded.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use busmq_core::{ErrorCode, Limits};
use busmq_storage::redis::{RedisConfig, RedisStorage};
use busmq_storage::{Error, Notification, QueueName, ReliableLock, Storage, TakeMode};
use busmq_testkit::redis as rk;
use bytes::Bytes;
use futures::StreamExt;
use tokio::time::Instant;

fn queue(name: &str) -> QueueName {
    QueueName::parse(name, &Limits::default()).unwrap()
}

async fn open(spec: &str) -> RedisStorage {
    let store = RedisStorage::new(RedisConfig::parse(spec).expect("a valid spec")).unwrap();
    assert!(
        store.wait_connected(Duration::from_secs(10)).await,
        "not connected to {spec} within 10 s"
    );
    store
}

fn seq(payload: &Bytes) -> u64 {
    std::str::from_utf8(payload).unwrap().parse().unwrap()
}

/// Retries `op` while it fails with UNAVAILABLE, for at most `within`.
async fn retry<T, F, Fut>(what: &str, within: Duration, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + within;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) if e.code() == ErrorCode::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// Checks that `consumed` holds every acknowledged sequence number and
/// that first deliveries come in push order (re-deliveries of messages
/// taken from a master that was then demoted are allowed).
fn assert_complete_and_ordered(acked: &[u64], consumed: &[u64]) -> usize {
    let mut seen = HashSet::new();
    let mut last = 0;
    for &s in consumed {
        if seen.insert(s) {
            assert!(s > last, "{s} delivered first after {last}: out of order");
            last = s;
        }
    }
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|s| !seen.contains(s))
        .collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    consumed.len() - seen.len()
}

/// `SENTINEL FAILOVER` while a producer and a consumer run: pushes during
/// and after it succeed (after retries on UNAVAILABLE), every acknowledged
/// message is consumed, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_mid_load_loses_nothing_acknowledged() {
    const TOTAL: u64 = 600;
    let set = rk::sentinel_set().await;
    // Acknowledge a push once the replica has it: Redis replicates
    // asynchronously, and a failover drops what the replica did not get.
    let spec = format!("{}?wait_replicas=1&wait_timeout_ms=500", set.spec());
    let store = Arc::new(open(&spec).await);
    let q = queue("failover.q");
    store
        .attach(&q, Some(Duration::from_secs(600)))
        .await
        .unwrap();
    let old_master = set.master_port().await;

    let producer = {
        let store = Arc::clone(&store);
        let q = q.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut unavailable = 0;
            for s in 1..=TOTAL {
                let deadline = Instant::now() + Duration::from_secs(45);
                loop {
                    match store.push(&q, vec![Bytes::from(s.to_string())]).await {
                        Ok(_) => break,
                        Err(e) if e.code() == ErrorCode::Unavailable => {
                            unavailable += 1;
                            assert!(Instant::now() < deadline, "push {s} failing for 45 s: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("push {s}: {e}"),
                    }
                }
                acked.push(s);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, unavailable)
        })
    };
    let consumer = {
        let store = Arc::clone(&store);
        let q = q.clone();
        tokio::spawn(async move {
            let mut consumed = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(90);
            while !consumed.contains(&TOTAL) {
                assert!(
                    Instant::now() < deadline,
                    "consumer did not see the last message"
                );
                match store.take(&q, 50, TakeMode::Remove).await {
                    Ok(batch) if batch.is_empty() => {
                        tokio::time::sleep(Duration::from_millis(10)).await
                    }
                    Ok(batch) => consumed.extend(batch.iter().map(|m| seq(&m.payload))),
                    Err(e) if e.code() == ErrorCode::Unavailable => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(e) => panic!("take: {e}"),
                }
            }
            consumed
        })
    };

    // Fail over once the load is running.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let new_master = set.failover().await;
    assert_ne!(new_master, old_master);

    let (acked, unavailable) = producer.await.unwrap();
    // Drain what is left after the last message (redeliveries).
    let mut consumed = consumer.await.unwrap();
    loop {
        let rest = retry("drain", Duration::from_secs(10), || {
            store.take(&q, 500, TakeMode::Remove)
        })
        .await;
        if rest.is_empty() {
            break;
        }
        consumed.extend(rest.iter().map(|m| seq(&m.payload)));
    }
    let duplicates = assert_complete_and_ordered(&acked, &consumed);
    println!(
        "failover {old_master} -> {new_master}: {} pushes acknowledged, {unavailable} UNAVAILABLE retried, {duplicates} redelivered",
        acked.len()
    );
    // Pushes work on the new master.
    let after = store.push(&q, vec![Bytes::from_static(b"after")]).await;
    assert!(after.is_ok(), "push after the failover: {after:?}");
}

/// A store with a fourth shard runs beside the three-shard one (a rolling
/// restart): consumers on the new layout find every existing queue,
/// producers switch layout mid-stream, and nothing is lost or reordered.
/// A queue re-created after it is closed moves to its new home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_fourth_shard_keeps_queues_and_order() {
    const QUEUES: usize = 24;
    const PER_QUEUE: u64 = 200;
    let shards = rk::redis_shards(4).await;
    let urls: Vec<String> = shards.iter().map(rk::RedisServer::url).collect();
    let old = Arc::new(open(&urls[..3].join(",")).await);
    let new = Arc::new(open(&urls.join(",")).await);

    // Ports are random, so which queues move is too: take names until a
    // few of them have the new shard as home.
    let mut queues: Vec<QueueName> = Vec::new();
    for i in 0.. {
        let moved = queues.iter().filter(|q| new.home_shard(q) == 3).count();
        if queues.len() >= QUEUES && moved >= 4 {
            break;
        }
        let q = queue(&format!("reshard.{i}"));
        if queues.len() < QUEUES || new.home_shard(&q) == 3 {
            queues.push(q);
        }
    }
    for q in &queues {
        old.attach(q, Some(Duration::from_secs(600))).await.unwrap();
    }
    let moved: Vec<&QueueName> = queues.iter().filter(|q| new.home_shard(q) == 3).collect();
    assert!(!moved.is_empty(), "some queues have the new shard as home");
    for q in &moved {
        let at = new.shard_of(q).await.unwrap();
        assert!(at < 3, "{q} is found on old shard {at}, not its new home");
    }

    let mut tasks = Vec::new();
    for q in &queues {
        let (old, new, q) = (Arc::clone(&old), Arc::clone(&new), q.clone());
        tasks.push(tokio::spawn(async move {
            // Producer: the first half through the old layout, then the new.
            let producer = {
                let (q, new) = (q.clone(), Arc::clone(&new));
                async move {
                    for start in (1..=PER_QUEUE).step_by(10) {
                        let store: &RedisStorage = if start <= PER_QUEUE / 2 { &old } else { &new };
                        let batch = (start..start + 10)
                            .map(|s| Bytes::from(s.to_string()))
                            .collect();
                        let ids = store.push(&q, batch).await.unwrap();
                        assert_eq!(ids.first, start, "ids stay dense across layouts");
                        tokio::task::yield_now().await;
                    }
                }
            };
            // Consumer: the new layout only.
            let consumer = async {
                let mut got = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(30);
                while (got.len() as u64) < PER_QUEUE {
                    assert!(
                        Instant::now() < deadline,
                        "{q}: only {} of {PER_QUEUE}",
                        got.len()
                    );
                    let batch = new.take(&q, 7, TakeMode::Remove).await.unwrap();
                    if batch.is_empty() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    got.extend(batch.iter().map(|m| seq(&m.payload)));
                }
                got
            };
            let ((), got) = tokio::join!(producer, consumer);
            assert_eq!(
                got,
                (1..=PER_QUEUE).collect::<Vec<_>>(),
                "{q}: lost or out of order"
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // Convergence: closed and re-created, a moved queue lands on its home.
    let q = moved[0];
    assert!(new.close(q).await.unwrap());
    assert!(
        !new.attach(q, Some(Duration::from_secs(600)))
            .await
            .unwrap()
            .existed
    );
    assert_eq!(new.shard_of(q).await.unwrap(), 3);
}

/// Every key busmq writes has a TTL once its queue is unattached, and
/// nothing is left on any shard once the ttl ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_keys_left_after_ttl() {
    let shards = rk::redis_shards(3).await;
    let urls: Vec<String> = shards.iter().map(rk::RedisServer::url).collect();
    let store = open(&urls.join(",")).await;
    let mut watch = store.watch();
    // Long enough that the set-up below (slow on a busy machine) finishes
    // before the first queue expires.
    let ttl = Duration::from_secs(2);
    let lock = ReliableLock {
        owner: "hygiene".into(),
        lease: Duration::from_secs(60),
    };
    let payload = |n: u64| {
        (0..n)
            .map(|i| Bytes::from(i.to_string()))
            .collect::<Vec<_>>()
    };
    let queues: Vec<QueueName> = (0..40).map(|i| queue(&format!("hygiene.{i}"))).collect();
    for (i, q) in queues.iter().enumerate() {
        // Attach twice, detach once, re-attach: the counting must hold.
        store.attach(q, Some(ttl)).await.unwrap();
        store.attach(q, None).await.unwrap();
        store.push(q, payload(10)).await.unwrap();
        store.set_metadata(q, "k", "v").await.unwrap();
        store.begin_reliable(q, &lock, 0).await.unwrap();
        store.take(q, 3, TakeMode::Pending).await.unwrap();
        store.ack(q, 1).await.unwrap();
        store.take(q, 2, TakeMode::Remove).await.unwrap();
        store.detach(q).await.unwrap();
        assert_eq!(store.detach(q).await.unwrap(), 0);
        // Writes while unattached: lists emptied and re-created, new
        // metadata, a lock renewed past the queue's ttl.
        store.take(q, 100, TakeMode::Remove).await.unwrap();
        if i % 2 == 0 {
            store.push(q, payload(2)).await.unwrap();
            store.set_metadata(q, "later", "x").await.unwrap();
            store.renew_reliable(q, &lock).await.unwrap();
        }
    }

    let mut keys_seen = 0;
    for shard in &shards {
        let client = redis::Client::open(shard.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .unwrap();
        for key in keys {
            assert!(key.starts_with("busmq:{hygiene."), "unexpected key {key}");
            let pttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(
                (0..=2000).contains(&pttl) || pttl == -2,
                "{key} has pttl {pttl} while its queue is unattached"
            );
            keys_seen += 1;
        }
    }
    // At least the last queue's meta, ready, pending and md were there.
    assert!(keys_seen >= 4, "only {keys_seen} keys");

    // Past the ttl, every shard is empty and watchers heard of every queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    for shard in &shards {
        loop {
            let size = shard.dbsize().await;
            if size == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{size} keys left on {}",
                shard.url()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut expired = HashSet::new();
    let all = tokio::time::timeout(Duration::from_secs(10), async {
        while expired.len() < queues.len() {
            match watch.next().await {
                Some(Notification::Expired(q)) => {
                    expired.insert(q);
                }
                Some(_) => {}
                None => break,
            }
        }
    })
    .await;
    assert!(
        all.is_ok(),
        "Expired for {} of {} queues",
        expired.len(),
        queues.len()
    );
    for q in &queues {
        assert_eq!(store.info(q).await.unwrap(), None);
    }
}

/// Redis killed mid-run: calls fail with UNAVAILABLE (not hang, not
/// panic); once it is back on the same port, calls work again, the data
/// it persisted is there, and the watch stream says LAGGED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_mid_run_fails_fast_and_recovers() {
    let server =
        rk::redis_server_on(None, &["--appendonly", "yes", "--appendfsync", "always"]).await;
    let store = open(&server.url()).await;
    let q = queue("outage.q");
    store
        .attach(&q, Some(Duration::from_secs(600)))
        .await
        .unwrap();
    store
        .push(&q, vec![Bytes::from_static(b"1")])
        .await
        .unwrap();
    let mut watch = store.watch();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next()).await;
    assert_eq!(first, Ok(Some(Notification::Lagged)), "subscribed");

    server.process().kill9();
    // Each call returns an error, promptly (bounded well under the
    // timeout), and says UNAVAILABLE.
    for round in 0..3 {
        let push = tokio::time::timeout(
            Duration::from_secs(5),
            store.push(&q, vec![Bytes::from_static(b"x")]),
        )
        .await
        .expect("push returns while Redis is down");
        let err = push.expect_err("push fails while Redis is down");
        assert_eq!(err.code(), ErrorCode::Unavailable, "round {round}: {err}");
        assert!(
            err.to_string().contains(&server.url()),
            "names the URL: {err}"
        );
        let take =
            tokio::time::timeout(Duration::from_secs(5), store.take(&q, 1, TakeMode::Remove))
                .await
                .expect("take returns while Redis is down");
        assert_eq!(take.expect_err("take fails").code(), ErrorCode::Unavailable);
        let info = tokio::time::timeout(Duration::from_secs(5), store.info(&q))
            .await
            .expect("info returns while Redis is down");
        assert_eq!(info.expect_err("info fails").code(), ErrorCode::Unavailable);
    }
    assert!(!store.ready().await, "not ready while Redis is down");

    server.process().restart().await;
    assert!(
        store.wait_connected(Duration::from_secs(10)).await,
        "reconnected"
    );
    assert!(store.ready().await);
    let ids = retry("push after restart", Duration::from_secs(5), || {
        store.push(&q, vec![Bytes::from_static(b"2")])
    })
    .await;
    assert_eq!(ids.first, 2, "the persisted queue is back");
    let lagged = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.next().await {
                Some(Notification::Lagged) => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    })
    .await;
    assert_eq!(lagged, Ok(true), "LAGGED after resubscribing");
    let taken = store.take(&q, 10, TakeMode::Remove).await.unwrap();
    assert_eq!(taken.iter().map(|m| m.id).collect::<Vec<_>>(), vec![1, 2]);
}

/// `busmq-storage` started before its Redis: it runs, logs the URL it
/// cannot reach, reports NOT_SERVING, and turns SERVING once Redis is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_at_startup_is_not_serving_until_redis_starts() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let redis_port = busmq_testkit::free_port();
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let builder = busmq_testkit::Process::builder("busmq-storage");
    let addr = builder.listen_addr();
    let storage = builder
        .args(["--listen", &addr.to_string(), "--backend", &redis_url])
        .spawn();
    storage.wait_ready().await;

    let channel = tonic::transport::Endpoint::from_shared(storage.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel);
    let status = || {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest {
                    service: "busmq.storage.v1.Storage".into(),
                })
                .await
                .map(|r| r.into_inner().status)
        }
    };
    assert_eq!(status().await.unwrap(), ServingStatus::NotServing as i32);
    let log_deadline = Instant::now() + Duration::from_secs(10);
    while !storage
        .log()
        .contains(&format!("cannot reach Redis at {redis_url}"))
    {
        assert!(
            Instant::now() < log_deadline,
            "no log naming the URL:\n{}",
            storage.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(storage.try_exit_status().is_none(), "keeps running");

    let _redis = rk::redis_server_on(Some(redis_port), &[]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while status().await.unwrap() != ServingStatus::Serving as i32 {
        assert!(
            Instant::now() < deadline,
            "not SERVING 15 s after Redis started:\n{}",
            storage.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it serves.
    let remote = busmq_storage::remote::RemoteStorage::connect_lazy(&storage.url()).unwrap();
    let q = queue("startup.q");
    remote
        .attach(&q, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(
        remote
            .push(&q, vec![Bytes::from_static(b"x")])
            .await
            .unwrap()
            .first,
        1
    );
}

/// Two stores on one Redis (two storage services): concurrent producers
/// and takers through both get every message exactly once, each
/// producer's messages in its order, and the reliable lock of one is
/// refused by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_redis_share_queues_without_races() {
    const PER_PRODUCER: u64 = 1000;
    let server = rk::redis_server().await;
    let a = Arc::new(open(&server.url()).await);
    let b = Arc::new(open(&server.url()).await);
    let q = queue("two.stores");
    assert!(
        !a.attach(&q, Some(Duration::from_secs(600)))
            .await
            .unwrap()
            .existed
    );
    assert!(
        b.attach(&q, Some(Duration::from_secs(600)))
            .await
            .unwrap()
            .existed
    );

    let mut producers = Vec::new();
    for (name, store) in [("a", Arc::clone(&a)), ("b", Arc::clone(&b))] {
        let q = q.clone();
        producers.push(tokio::spawn(async move {
            for start in (1..=PER_PRODUCER).step_by(25) {
                let batch = (start..start + 25)
                    .map(|s| Bytes::from(format!("{name}{s}")))
                    .collect();
                store.push(&q, batch).await.unwrap();
            }
        }));
    }
    let mut takers = Vec::new();
    for store in [&a, &b, &a, &b] {
        let (store, q) = (Arc::clone(store), q.clone());
        takers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut idle = 0;
            while idle < 20 {
                assert!(Instant::now() < deadline, "takers did not finish");
                let batch = store.take(&q, 13, TakeMode::Remove).await.unwrap();
                if batch.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                } else {
                    idle = 0;
                }
                got.extend(batch);
            }
            got
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    let mut all = Vec::new();
    for t in takers {
        let got = t.await.unwrap();
        assert!(
            got.windows(2).all(|w| w[0].id < w[1].id),
            "each taker sees id order"
        );
        all.extend(got);
    }
    // Whatever the takers left (they stop after a quiet spell).
    all.extend(a.take(&q, 10_000, TakeMode::Remove).await.unwrap());
    all.sort_by_key(|m| m.id);
    let ids: Vec<u64> = all.iter().map(|m| m.id).collect();
    assert_eq!(
        ids,
        (1..=2 * PER_PRODUCER).collect::<Vec<_>>(),
        "each id exactly once"
    );
    for name in ["a", "b"] {
        let mine: Vec<u64> = all
            .iter()
            .filter_map(|m| {
                std::str::from_utf8(&m.payload)
                    .ok()?
                    .strip_prefix(name)?
                    .parse()
                    .ok()
            })
            .collect();
        assert_eq!(
            mine,
            (1..=PER_PRODUCER).collect::<Vec<_>>(),
            "{name}'s messages in order"
        );
    }

    let lock = |owner: &str| ReliableLock {
        owner: owner.into(),
        lease: Duration::from_secs(30),
    };
    a.begin_reliable(&q, &lock("a"), 0).await.unwrap();
    let refused = b.begin_reliable(&q, &lock("b"), 0).await.unwrap_err();
    assert_eq!(refused.code(), ErrorCode::FailedPrecondition);
    assert!(b.info(&q).await.unwrap().unwrap().reliable_consumer);
}

/// `rediss://`: `busmq-storage` serves a TLS-only Redis whose certificate
/// it trusts (through `SSL_CERT_FILE`), and refuses one it does not trust
/// (signed by a CA outside the system's roots), saying so in its log and in
/// health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_verifies_the_server_certificate() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let tls = rk::redis_tls_server().await;
    let start = |trust: bool| {
        let builder = busmq_testkit::Process::builder("busmq-storage");
        let addr = builder.listen_addr();
        let builder = builder.args(["--listen", &addr.to_string(), "--backend", &tls.url()]);
        // Untrusted: the system's roots, which do not hold the test CA.
        let builder = if trust {
            builder.env("SSL_CERT_FILE", &tls.ca)
        } else {
            builder
        };
        builder.spawn()
    };
    let status = |url: String| async move {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "busmq.storage.v1.Storage".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    };

    let trusted = start(true);
    let untrusted = start(false);
    trusted.wait_ready().await;
    untrusted.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while status(trusted.url()).await != ServingStatus::Serving as i32 {
        assert!(
            Instant::now() < deadline,
            "not SERVING over TLS:\n{}",
            trusted.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let remote = busmq_storage::remote::RemoteStorage::connect_lazy(&trusted.url()).unwrap();
    let q = queue("tls.q");
    remote
        .attach(&q, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    remote
        .push(&q, vec![Bytes::from_static(b"secret")])
        .await
        .unwrap();
    let taken = remote.take(&q, 10, TakeMode::Remove).await.unwrap();
    assert_eq!(taken[0].payload, Bytes::from_static(b"secret"));

    let expected = format!(
        "cannot reach Redis at {}: invalid peer certificate",
        tls.url()
    );
    while !untrusted.log().contains(&expected) {
        assert!(
            Instant::now() < deadline,
            "no TLS failure logged:\n{}",
            untrusted.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status(untrusted.url()).await,
        ServingStatus::NotServing as i32
    );
}
