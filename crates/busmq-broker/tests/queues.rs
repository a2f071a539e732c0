//! The broker's queue semantics, in-process: a broker on port 0 over the
//! memory store, driven through the generated gRPC client.

mod common;

use std::sync::Arc;
use std::time::Duration;

use busmq_broker::BrokerConfig;
use busmq_core::Limits;
use busmq_proto::v1::{self, ConsumeMode, ConsumeRequest, consume_event::Event};
use bytes::Bytes;
use common::{Broker, Consumer, broker, broker_with, msgs, req};
use tonic::Code;

async fn ids_are_dense_from_one_and_order_is_push_order() {
    let b = broker().await;
    assert!(!b.attach("orders").await.existed);
    assert!(b.attach("orders").await.existed);
    let mut c = b
        .consume(req("orders", ConsumeMode::Unreliable))
        .await
        .unwrap();
    let first = b.push("orders", msgs(0..1)).await.unwrap();
    assert_eq!((first.first_id, first.last_id), (1, 1));
    let batch = b.push("orders", msgs(1..5000)).await.unwrap();
    assert_eq!((batch.first_id, batch.last_id), (2, 5000));
    for i in 5000..10_000 {
        b.push("orders", msgs(i..i + 1)).await.unwrap();
    }
    let got = c.take(10_000).await;
    let ids: Vec<u64> = got.iter().map(|m| m.id).collect();
    assert_eq!(ids, (1..=10_000).collect::<Vec<_>>());
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, m)| m.payload == format!("m{i}"))
    );
}

async fn unreliable_competing_consumers_get_each_message_once() {
    let b = broker().await;
    b.attach("work").await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut c = b
            .consume(ConsumeRequest {
                prefetch: Some(16),
                ..req("work", ConsumeMode::Unreliable)
            })
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while let Ok(Some(batch)) =
                tokio::time::timeout(Duration::from_millis(500), c.next()).await
            {
                ids.extend(batch.into_iter().map(|m| m.id));
            }
            ids
        }));
    }
    for i in 0..20 {
        b.push("work", msgs(i * 100..(i + 1) * 100)).await.unwrap();
    }
    let mut all = Vec::new();
    for t in tasks {
        let ids = t.await.unwrap();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "each consumer sees push order"
        );
        all.extend(ids);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=2000).collect::<Vec<_>>());
}

async fn reliable_redelivers_unacked_and_refuses_a_second_consumer() {
    let b = broker().await;
    b.attach("rel").await;
    b.push("rel", msgs(0..10)).await.unwrap();
    let mut c = b.consume(req("rel", ConsumeMode::Reliable)).await.unwrap();
    assert_eq!(c.redelivered, 0);
    let got = c.take(10).await;
    assert_eq!(got.first().unwrap().id, 1);
    assert_eq!(b.ack("rel", 4).await.unwrap(), 4);
    assert_eq!(b.ack("rel", 2).await.unwrap(), 0, "acking again is a no-op");

    let second = b
        .consume(req("rel", ConsumeMode::Reliable))
        .await
        .err()
        .unwrap();
    assert_eq!(second.code(), Code::FailedPrecondition, "{second:?}");

    let unknown = b.ack("rel", 99).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    drop(c);
    // The departed consumer's lock is released; the next one gets 5..=10.
    let mut c = retry_reliable(&b, req("rel", ConsumeMode::Reliable)).await;
    assert_eq!(c.redelivered, 6);
    let ids: Vec<u64> = c.take(6).await.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![5, 6, 7, 8, 9, 10]);
    b.ack("rel", 10).await.unwrap();
    assert_eq!(b.info("rel").await.count, 0);
}

/// The broker releases a reliable lock when it notices the client left,
/// which takes a moment after the client drops its stream.
async fn retry_reliable(b: &Broker, r: ConsumeRequest) -> Consumer {
    for _ in 0..100 {
        match b.consume(r.clone()).await {
            Ok(c) => return c,
            Err(s) if s.code() == Code::FailedPrecondition => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    panic!("reliable lock never released");
}

async fn reliable_last_skips_handled_messages() {
    let b = broker().await;
    b.attach("last").await;
    b.push("last", msgs(0..5)).await.unwrap();
    let mut c = b
        .consume(ConsumeRequest {
            last: Some(3),
            ..req("last", ConsumeMode::Reliable)
        })
        .await
        .unwrap();
    let ids: Vec<u64> = c.take(2).await.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![4, 5]);
}

async fn persistent_readers_each_read_everything_from_their_index() {
    let b = broker().await;
    b.attach("feed").await;
    b.push("feed", msgs(0..50)).await.unwrap();
    let mut from_start = b
        .consume(req("feed", ConsumeMode::Persistent))
        .await
        .unwrap();
    let mut from_40 = b
        .consume(ConsumeRequest {
            index: Some(40),
            ..req("feed", ConsumeMode::Persistent)
        })
        .await
        .unwrap();
    b.push("feed", msgs(50..100)).await.unwrap();
    let a: Vec<u64> = from_start.take(100).await.iter().map(|m| m.id).collect();
    let b40: Vec<u64> = from_40.take(60).await.iter().map(|m| m.id).collect();
    assert_eq!(a, (1..=100).collect::<Vec<_>>());
    assert_eq!(b40, (40..=100).collect::<Vec<_>>());
    assert_eq!(
        b.info("feed").await.count,
        100,
        "persistent reads remove nothing"
    );
}

async fn persistent_late_joiner_gets_no_gap_and_no_duplicate() {
    let b = Arc::new(broker().await);
    b.attach("live").await;
    // The consumer joins once half the batches are in, while the pusher
    // goes on: the join always lands in the middle of a live stream.
    let (half_pushed, halfway) = tokio::sync::oneshot::channel();
    let pusher = {
        let b = Arc::clone(&b);
        tokio::spawn(async move {
            let mut half_pushed = Some(half_pushed);
            for i in 0..400 {
                b.push("live", msgs(i * 5..(i + 1) * 5)).await.unwrap();
                if i == 199 {
                    half_pushed.take().unwrap().send(()).unwrap();
                }
            }
        })
    };
    halfway.await.unwrap();
    let mut late = b
        .consume(ConsumeRequest {
            index: Some(1),
            ..req("live", ConsumeMode::Persistent)
        })
        .await
        .unwrap();
    pusher.await.unwrap();
    let ids: Vec<u64> = late.take(2000).await.iter().map(|m| m.id).collect();
    assert_eq!(ids, (1..=2000).collect::<Vec<_>>());
}

/// After a batch smaller than its prefetch a consumer does not ask the
/// store again but waits for the queue's next change: every message pushed
/// after that batch, while it is on its way or while the consumer waits,
/// must still reach the consumer, in every mode.
async fn nothing_is_stranded_after_a_short_batch() {
    for mode in [
        ConsumeMode::Unreliable,
        ConsumeMode::Reliable,
        ConsumeMode::Persistent,
        ConsumeMode::Lease,
    ] {
        let b = Arc::new(broker().await);
        let queue = format!("short-{}", mode.as_str_name());
        b.attach(&queue).await;
        let mut c = b
            .consume(ConsumeRequest {
                prefetch: Some(8),
                ..req(&queue, mode)
            })
            .await
            .unwrap();
        // Lock-step: each round's batch is short, so the consumer waits
        // for the next round's push.
        let mut next = 1;
        for round in 1..=7u32 {
            b.push(&queue, msgs(0..round)).await.unwrap();
            let ids: Vec<u64> = c.take(round as usize).await.iter().map(|m| m.id).collect();
            let want: Vec<u64> = (next..next + u64::from(round)).collect();
            assert_eq!(ids, want, "{mode:?} round {round}");
            next += u64::from(round);
        }
        // Pushes racing the consumer: single messages land while batches
        // are taken, sent and waited on.
        let pusher = {
            let (b, queue) = (Arc::clone(&b), queue.clone());
            tokio::spawn(async move {
                for i in 0..500 {
                    b.push(&queue, msgs(i..i + 1)).await.unwrap();
                }
            })
        };
        let ids: Vec<u64> = c.take(500).await.iter().map(|m| m.id).collect();
        assert_eq!(ids, (next..next + 500).collect::<Vec<_>>(), "{mode:?}");
        pusher.await.unwrap();
    }
}

async fn a_backlog_of_large_messages_reaches_a_default_client_in_frames_it_accepts() {
    // 48 messages of 512 KiB (24 MiB) taken at once by a prefetch of 1,024
    // would be one frame far over what the broker may encode and what a
    // gRPC client accepts by default (4 MiB, this test client's limit).
    let b = broker().await;
    b.attach("large").await;
    let payload = Bytes::from(vec![7u8; 512 << 10]);
    for _ in 0..4 {
        b.push("large", vec![payload.clone(); 12]).await.unwrap();
    }
    let mut r = req("large", ConsumeMode::Unreliable);
    r.prefetch = Some(1024);
    let mut c = b.consume(r).await.unwrap();
    let got = c.take(48).await;
    assert_eq!(
        got.iter().map(|m| m.id).collect::<Vec<_>>(),
        (1..=48).collect::<Vec<_>>()
    );
    assert!(got.iter().all(|m| m.payload == payload));
    assert_eq!(b.info("large").await.count, 0);
}

async fn max_ends_the_stream() {
    let b = broker().await;
    b.attach("few").await;
    b.push("few", msgs(0..10)).await.unwrap();
    let mut c = b
        .consume(ConsumeRequest {
            max: Some(3),
            ..req("few", ConsumeMode::Unreliable)
        })
        .await
        .unwrap();
    assert_eq!(c.take(3).await.len(), 3);
    assert!(c.next().await.is_none(), "stream ends after max");
    assert_eq!(b.info("few").await.count, 7, "max takes no more than max");
}

async fn consumers_learn_of_close() {
    let b = broker().await;
    b.attach("doomed").await;
    let mut c = b
        .consume(req("doomed", ConsumeMode::Unreliable))
        .await
        .unwrap();
    let closed = b
        .client
        .clone()
        .close(v1::CloseRequest {
            queue: "doomed".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(closed.existed);
    let event = tokio::time::timeout(Duration::from_secs(5), c.stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(
        event.event,
        Some(Event::Closed(v1::Closed { reason })) if reason == v1::ClosedReason::Closed as i32
    ));
    let gone = b
        .consume(req("doomed", ConsumeMode::Unreliable))
        .await
        .err()
        .unwrap();
    assert_eq!(gone.code(), Code::NotFound);
}

async fn unattached_queue_expires_after_its_ttl() {
    let b = broker().await;
    b.client
        .clone()
        .attach(v1::AttachRequest {
            max_deliveries: None,
            queue: "brief".into(),
            ttl: Some(common::secs(1)),
        })
        .await
        .unwrap();
    b.push("brief", msgs(0..3)).await.unwrap();
    let mut c = b
        .consume(req("brief", ConsumeMode::Persistent))
        .await
        .unwrap();
    c.take(3).await;
    b.client
        .clone()
        .detach(v1::DetachRequest {
            queue: "brief".into(),
        })
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), c.stream.message())
        .await
        .expect("expiry within 5 s")
        .unwrap()
        .unwrap();
    assert!(matches!(
        event.event,
        Some(Event::Closed(v1::Closed { reason })) if reason == v1::ClosedReason::Expired as i32
    ));
    let mut client = b.client.clone();
    let info = client.info(v1::InfoRequest {
        queue: "brief".into(),
    });
    assert_eq!(
        info.await.unwrap_err().code(),
        Code::NotFound,
        "expired with the queue"
    );
    assert!(
        !b.attach("brief").await.existed,
        "messages expired with the queue"
    );
}

async fn bad_input_gets_clear_errors_and_the_server_keeps_serving() {
    let b = broker_with(BrokerConfig {
        limits: Limits {
            max_message_bytes: 1024,
            ..Limits::default()
        },
        ..BrokerConfig::default()
    })
    .await;
    let mut client = b.client.clone();
    for bad in ["", "has space", "ünïcode", &"x".repeat(201)] {
        let err = client
            .attach(v1::AttachRequest {
                max_deliveries: None,
                queue: bad.into(),
                ttl: None,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(
            err.message().contains("invalid queue name"),
            "{}",
            err.message()
        );
    }
    let zero_ttl = client
        .attach(v1::AttachRequest {
            max_deliveries: None,
            queue: "q".into(),
            ttl: Some(common::secs(0)),
        })
        .await
        .unwrap_err();
    assert_eq!(zero_ttl.code(), Code::InvalidArgument);

    let missing = b.push("nowhere", msgs(0..1)).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(
        missing.message().contains("attach"),
        "{}",
        missing.message()
    );

    b.attach("q").await;
    let empty = b.push("q", vec![]).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    let big = b
        .push("q", vec![Bytes::from(vec![0u8; 1025])])
        .await
        .unwrap_err();
    assert_eq!(big.code(), Code::ResourceExhausted);
    assert!(big.message().contains("1025"), "{}", big.message());

    let unknown_ack = b.ack("q", 7).await.unwrap_err();
    assert_eq!(unknown_ack.code(), Code::NotFound);
    let zero_ack = b.ack("q", 0).await.unwrap_err();
    assert_eq!(zero_ack.code(), Code::InvalidArgument);

    let bad_mode = b
        .consume(ConsumeRequest {
            mode: 42,
            ..req("q", ConsumeMode::Unreliable)
        })
        .await
        .err()
        .unwrap();
    assert_eq!(bad_mode.code(), Code::InvalidArgument);
    let index_unreliable = b
        .consume(ConsumeRequest {
            index: Some(3),
            ..req("q", ConsumeMode::Unreliable)
        })
        .await
        .err()
        .unwrap();
    assert_eq!(index_unreliable.code(), Code::InvalidArgument);
    let no_queue = b
        .consume(req("absent", ConsumeMode::Unreliable))
        .await
        .err()
        .unwrap();
    assert_eq!(no_queue.code(), Code::NotFound);

    // Lease mode: options of other modes, timeouts, tokens.
    for bad in [
        ConsumeRequest {
            visibility_timeout: Some(common::millis(1000)),
            ..req("q", ConsumeMode::Reliable)
        },
        ConsumeRequest {
            last: Some(1),
            ..req("q", ConsumeMode::Lease)
        },
        ConsumeRequest {
            visibility_timeout: Some(common::millis(0)),
            ..req("q", ConsumeMode::Lease)
        },
        ConsumeRequest {
            visibility_timeout: Some(common::millis(12 * 3600 * 1000 + 1)),
            ..req("q", ConsumeMode::Lease)
        },
    ] {
        let err = b.consume(bad.clone()).await.err().unwrap();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
    }
    let no_token = client
        .nack(v1::NackRequest {
            queue: "q".into(),
            lease: None,
        })
        .await
        .unwrap_err();
    assert_eq!(no_token.code(), Code::InvalidArgument);
    let neither = client
        .ack(v1::AckRequest {
            queue: "q".into(),
            target: None,
        })
        .await
        .unwrap_err();
    assert_eq!(neither.code(), Code::InvalidArgument);
    let unknown_lease = client
        .ack(v1::AckRequest {
            queue: "q".into(),
            target: Some(v1::ack_request::Target::Lease(v1::LeaseToken {
                id: 3,
                attempt: 1,
            })),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_lease.code(), Code::NotFound);
    let over_max = client
        .attach(v1::AttachRequest {
            max_deliveries: Some(1001),
            queue: "q".into(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(over_max.code(), Code::InvalidArgument);

    // Still serving.
    assert_eq!(b.push("q", msgs(0..2)).await.unwrap().last_id, 2);
}

async fn push_stream_answers_each_batch_in_order() {
    let b = broker().await;
    b.attach("fast").await;
    let requests = (0..50u64).map(|seq| v1::PushStreamRequest {
        sequence: seq,
        queue: "fast".into(),
        messages: msgs(0..10),
    });
    let mut acks = b
        .client
        .clone()
        .push_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut expected_first = 1;
    for seq in 0..50u64 {
        let ack = acks.message().await.unwrap().unwrap();
        assert_eq!(ack.sequence, seq);
        assert_eq!(
            (ack.first_id, ack.last_id),
            (expected_first, expected_first + 9)
        );
        expected_first += 10;
    }
    assert!(acks.message().await.unwrap().is_none());

    // A bad batch ends the stream with its status.
    let bad = vec![v1::PushStreamRequest {
        sequence: 0,
        queue: "fast".into(),
        messages: vec![],
    }];
    let mut acks = b
        .client
        .clone()
        .push_stream(tokio_stream::iter(bad))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        acks.message().await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

async fn one_push_stream_feeds_many_queues_each_in_stream_order() {
    let b = broker().await;
    let queues = ["fan.a", "fan.b", "fan.c"];
    for q in queues {
        b.attach(q).await;
    }
    // Batch `seq` goes to queue seq % 3 and says so in its payloads.
    let requests = (0..60u64).map(move |seq| v1::PushStreamRequest {
        sequence: seq,
        queue: queues[seq as usize % 3].into(),
        messages: (0..10).map(|i| Bytes::from(format!("{seq}.{i}"))).collect(),
    });
    let mut acks = b
        .client
        .clone()
        .push_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut answered = std::collections::BTreeMap::new();
    while let Some(ack) = acks.message().await.unwrap() {
        assert!(
            answered
                .insert(ack.sequence, (ack.first_id, ack.last_id))
                .is_none(),
            "sequence {} answered twice",
            ack.sequence
        );
    }
    assert_eq!(answered.len(), 60, "every batch answered");
    // Per queue, ids follow stream order: the k-th batch of a queue holds
    // ids 10k+1..=10k+10.
    for (seq, ids) in &answered {
        let k = seq / 3;
        assert_eq!(*ids, (10 * k + 1, 10 * k + 10), "batch {seq}");
    }
    for (i, q) in queues.iter().enumerate() {
        let mut c = b.consume(req(q, ConsumeMode::Unreliable)).await.unwrap();
        let got: Vec<String> = c
            .take(200)
            .await
            .iter()
            .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
            .collect();
        let want: Vec<String> = (0..20u64)
            .flat_map(|k| (0..10).map(move |j| format!("{}.{j}", 3 * k + i as u64)))
            .collect();
        assert_eq!(got, want, "queue {q} in stream order");
    }
}

async fn flush_and_metadata() {
    let b = broker().await;
    b.attach("meta").await;
    b.push("meta", msgs(0..5)).await.unwrap();
    let mut client = b.client.clone();
    let flushed = client
        .flush(v1::FlushRequest {
            queue: "meta".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(flushed.removed, 5);
    assert_eq!(
        b.push("meta", msgs(0..1)).await.unwrap().first_id,
        6,
        "ids keep counting"
    );
    client
        .set_metadata(v1::SetMetadataRequest {
            queue: "meta".into(),
            key: "owner".into(),
            value: "billing".into(),
        })
        .await
        .unwrap();
    let value = client
        .get_metadata(v1::GetMetadataRequest {
            queue: "meta".into(),
            key: "owner".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .value;
    assert_eq!(value.as_deref(), Some("billing"));
    let info = b.info("meta").await;
    assert_eq!(
        (info.count, info.pushed, info.next_id, info.ttl),
        (1, 6, 7, Some(common::secs(30)))
    );
}

/// A client with thousands of queues multiplexes thousands of push streams
/// over one connection, and every batch of every stream is acknowledged.
/// (The connection-window fix in `busmq_server::grpc_server` is reproduced
/// under CPU load by `busmq bench --queues 3000 --producers 1 --consumers 1`,
/// which lost its connection before it; this quick test does not load the
/// server enough to reproduce that.)
async fn thousands_of_push_streams_share_one_connection() {
    const QUEUES: usize = 3000;
    const BATCHES: u64 = 8;
    let b = broker().await;
    let mut pushes = tokio::task::JoinSet::new();
    for q in 0..QUEUES {
        let mut client = b.client.clone();
        pushes.spawn(async move {
            let queue = format!("many.{q}");
            client
                .attach(v1::AttachRequest {
                    queue: queue.clone(),
                    ttl: None,
                    max_deliveries: None,
                })
                .await?;
            let requests = (0..BATCHES).map(move |sequence| v1::PushStreamRequest {
                sequence,
                queue: queue.clone(),
                messages: msgs(0..64),
            });
            let mut acks = client
                .push_stream(tokio_stream::iter(requests))
                .await?
                .into_inner();
            let mut acked = 0;
            while let Some(ack) = acks.message().await? {
                acked += ack.last_id - ack.first_id + 1;
            }
            Ok::<u64, tonic::Status>(acked)
        });
    }
    let mut total = 0;
    while let Some(pushed) = pushes.join_next().await {
        total += pushed.expect("push task").expect("every push acked");
    }
    assert_eq!(total, QUEUES as u64 * BATCHES * 64);
}

busmq_testkit::in_both_deployments!(
    ids_are_dense_from_one_and_order_is_push_order,
    unreliable_competing_consumers_get_each_message_once,
    reliable_redelivers_unacked_and_refuses_a_second_consumer,
    reliable_last_skips_handled_messages,
    persistent_readers_each_read_everything_from_their_index,
    persistent_late_joiner_gets_no_gap_and_no_duplicate,
    nothing_is_stranded_after_a_short_batch,
    a_backlog_of_large_messages_reaches_a_default_client_in_frames_it_accepts,
    max_ends_the_stream,
    consumers_learn_of_close,
    unattached_queue_expires_after_its_ttl,
    bad_input_gets_clear_errors_and_the_server_keeps_serving,
    push_stream_answers_each_batch_in_order,
    one_push_stream_feeds_many_queues_each_in_stream_order,
    flush_and_metadata,
    thousands_of_push_streams_share_one_connection(flavor = "multi_thread", worker_threads = 2),
);
