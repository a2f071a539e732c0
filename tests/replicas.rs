//! Many processes on one bus: two storage services on one Redis, three
//! brokers over them (two sharing a storage service). Every operation is
//! atomic in Redis, so there is no read-modify-write race between them.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use busmq_client::{AttachOptions, Bus, ConsumeOptions, ErrorCode};
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_brokers_on_two_storage_services_on_one_redis() {
    let redis = busmq_testkit::redis::redis_server().await;
    let storage_a = busmq_testkit::storage_on(&redis.url()).await;
    let storage_b = busmq_testkit::storage_on(&redis.url()).await;
    let brokers = [
        busmq_testkit::broker(storage_a.addr()).await,
        busmq_testkit::broker(storage_a.addr()).await,
        busmq_testkit::broker(storage_b.addr()).await,
    ];
    let mut buses = Vec::new();
    for b in &brokers {
        buses.push(Bus::connect(b.url()).await.unwrap());
    }

    // Attach through every broker: one queue, counted once per attach.
    let mut existed = Vec::new();
    for bus in &buses {
        existed.push(
            bus.queue("shared")
                .attach(AttachOptions::default())
                .await
                .unwrap(),
        );
    }
    assert_eq!(existed, vec![false, true, true]);
    assert_eq!(
        buses[2].queue("shared").info().await.unwrap().attachments,
        3
    );

    // Two unreliable consumers per broker.
    let mut consumers = Vec::new();
    for bus in &buses {
        for _ in 0..2 {
            let mut c = bus
                .queue("shared")
                .consume(ConsumeOptions::default().prefetch(16))
                .await
                .unwrap();
            consumers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(2), c.next()).await
                {
                    let d = d.unwrap();
                    got.push((d.id, String::from_utf8(d.payload.to_vec()).unwrap()));
                }
                got
            }));
        }
    }

    // Producers on every broker at once; ids come from Redis, one counter.
    let mut producers = Vec::new();
    for (p, bus) in buses.iter().enumerate() {
        let q = bus.queue("shared");
        producers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for k in 0..500 {
                ids.push(q.push(format!("p{p}-{k}")).await.unwrap());
            }
            ids
        }));
    }
    let mut all_ids = Vec::new();
    for p in producers {
        let ids = p.await.unwrap();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "a producer's ids increase"
        );
        all_ids.extend(ids);
    }
    all_ids.sort_unstable();
    assert_eq!(
        all_ids,
        (1..=1500).collect::<Vec<u64>>(),
        "dense ids, no id twice"
    );

    let mut delivered = Vec::new();
    let mut consumers_used = 0;
    for c in consumers {
        let got = c.await.unwrap();
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "each consumer sees id order"
        );
        consumers_used += usize::from(!got.is_empty());
        delivered.extend(got);
    }
    assert_eq!(delivered.len(), 1500, "no message delivered twice");
    let unique: BTreeSet<u64> = delivered.iter().map(|(id, _)| *id).collect();
    assert_eq!(unique.len(), 1500, "every message delivered once");
    assert!(
        consumers_used >= 3,
        "consumers on several brokers shared the work"
    );
    // Per producer, messages were stored in push order.
    for p in 0..3 {
        let mut mine: Vec<(u64, u32)> = delivered
            .iter()
            .filter_map(|(id, text)| {
                let (who, k) = text.split_once('-')?;
                (who == format!("p{p}")).then(|| (*id, k.parse().unwrap()))
            })
            .collect();
        mine.sort_unstable();
        assert!(
            mine.windows(2).all(|w| w[0].1 < w[1].1),
            "producer {p} kept its order"
        );
    }

    // One reliable consumer for the whole bus, whichever broker it uses.
    let holder = buses[0]
        .queue("shared")
        .consume(ConsumeOptions::reliable())
        .await
        .unwrap();
    for bus in &buses[1..] {
        let refused = bus
            .queue("shared")
            .consume(ConsumeOptions::reliable())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), ErrorCode::FailedPrecondition, "{refused}");
    }
    drop(holder);

    // A push on one broker wakes a consumer waiting on another.
    let mut waiting = buses[1]
        .queue("shared")
        .consume(ConsumeOptions::persistent(1501))
        .await
        .unwrap();
    buses[2].queue("shared").push("wake up").await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), waiting.next())
        .await
        .expect("woken across brokers")
        .unwrap()
        .unwrap();
    assert_eq!((d.id, &d.payload[..]), (1501, &b"wake up"[..]));
}

#[test]
fn a_malformed_backend_stops_busmq_storage_with_a_clear_error() {
    for (spec, expected) in [
        ("redis://", "redis"),
        ("redis://a:6379,,redis://b:6379", "shard #2"),
        ("postgres://db", "unknown storage backend"),
    ] {
        let out = Command::new(busmq_testkit::bin_path("busmq-storage"))
            .args(["--listen", "127.0.0.1:0", "--backend", spec])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{spec:?} must not start");
        assert!(stderr.contains(expected), "{spec:?}: {stderr}");
    }
}
