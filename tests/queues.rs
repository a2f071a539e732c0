//! Queues across real processes: `busmq-storage` and `busmq-broker` run as
//! separate programs, driven through the Rust SDK (and the `busmq` CLI
//! where a consumer has to be killed).

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use busmq_client::{
    AttachOptions, Bus, ClosedReason, ConsumeOptions, Consumer, ErrorCode, Reconnect,
};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};

mod common;

use common::cluster;

/// Next delivery within 10 s; panics if the stream ends or errors.
async fn next_id(c: &mut Consumer) -> u64 {
    tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("a message within 10 s")
        .expect("the stream is still open")
        .expect("no error")
        .id
}

#[tokio::test]
async fn ten_thousand_messages_arrive_in_push_order() {
    let c = cluster().await;
    let q = c.bus.queue("ordered");
    assert!(
        !q.attach(AttachOptions::default()).await.unwrap(),
        "new queue"
    );
    let mut consumer = q.consume(ConsumeOptions::default()).await.unwrap();
    // Single pushes and batches interleaved, as producers really do.
    let mut expected = 1;
    for i in 0..1000u64 {
        if i % 2 == 0 {
            assert_eq!(q.push(format!("m{expected}")).await.unwrap(), expected);
            expected += 1;
        } else {
            let batch: Vec<String> = (0..19).map(|k| format!("m{}", expected + k)).collect();
            let ids = q.push_batch(batch).await.unwrap();
            assert_eq!((ids.first, ids.last), (expected, expected + 18));
            expected += 19;
        }
    }
    assert_eq!(expected, 10_001);
    for want in 1..=10_000u64 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.id, want);
        assert_eq!(d.payload, format!("m{want}"));
    }
    assert_eq!(q.pushed(), 10_000);
    assert_eq!(q.consumed(), 10_000);
}

#[tokio::test]
async fn four_competing_unreliable_consumers_get_every_message_exactly_once() {
    let c = cluster().await;
    let q = c.bus.queue("work");
    q.attach(AttachOptions::default()).await.unwrap();
    let mut workers = Vec::new();
    for _ in 0..4 {
        // Each worker on its own connection, as separate programs would be.
        let bus = Bus::connect(c.broker.url()).await.unwrap();
        let mut consumer = bus
            .queue("work")
            .consume(ConsumeOptions::default().prefetch(32))
            .await
            .unwrap();
        workers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while let Ok(Some(d)) =
                tokio::time::timeout(Duration::from_secs(1), consumer.next()).await
            {
                ids.push(d.unwrap().id);
            }
            ids
        }));
    }
    for chunk in 0..50u64 {
        let batch: Vec<String> = (0..100)
            .map(|i| format!("job{}", chunk * 100 + i))
            .collect();
        q.push_batch(batch).await.unwrap();
    }
    let mut all = Vec::new();
    let mut busy = 0;
    for w in workers {
        let ids = w.await.unwrap();
        assert!(
            ids.windows(2).all(|p| p[0] < p[1]),
            "each worker sees push order"
        );
        busy += usize::from(!ids.is_empty());
        all.extend(ids);
    }
    let total = all.len();
    let unique: BTreeSet<u64> = all.into_iter().collect();
    assert_eq!(total, 5000, "no message delivered twice");
    assert_eq!(unique, (1..=5000).collect(), "no message lost");
    assert!(busy >= 2, "the work was shared (busy workers: {busy})");
}

#[tokio::test]
async fn reliable_messages_of_a_killed_consumer_are_delivered_again() {
    const TOTAL: u64 = 20_000;
    let c = cluster().await;
    let q = c.bus.queue("payments");
    q.attach(AttachOptions::default()).await.unwrap();
    for chunk in 0..(TOTAL / 1000) {
        q.push_batch((1..=1000).map(|i| format!("p{}", chunk * 1000 + i)))
            .await
            .unwrap();
    }

    // A separate consumer program (the CLI) consumes reliably, acking each
    // batch after printing it. Nobody reads its output after the first
    // lines, so it blocks on a full pipe in the middle of a batch: messages
    // delivered to it and not acked. Then it is SIGKILLed.
    let mut cli = tokio::process::Command::new(busmq_testkit::bin_path("busmq"))
        .args([
            "consume",
            "payments",
            "--reliable",
            "--server",
            &c.broker.url(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(cli.stdout.take().unwrap()).lines();
    let first_line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the CLI consumer prints within 10 s")
        .unwrap()
        .unwrap();
    assert!(first_line.starts_with("1\t"), "{first_line}");
    let mut last_consumed = u64::MAX;
    for _ in 0..200 {
        let info = q.info().await.unwrap();
        if info.pending > 0 && info.consumed == last_consumed {
            break; // blocked with un-acked messages
        }
        last_consumed = info.consumed;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cli.start_kill().unwrap();
    cli.wait().await.unwrap();
    let mut handled = BTreeSet::from([1u64]);
    while let Some(line) = lines.next_line().await.unwrap() {
        handled.insert(line.split('\t').next().unwrap().parse().unwrap());
    }
    assert!(handled.len() < TOTAL as usize, "killed part way through");

    // A new reliable consumer gets everything not acked, in order; together
    // with what the dead one printed, nothing is missing.
    let mut consumer = loop {
        match q.consume(ConsumeOptions::reliable()).await {
            Ok(consumer) => break consumer,
            // The broker releases the dead consumer's lock once it notices.
            Err(e) if e.code() == ErrorCode::FailedPrecondition => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(
        consumer.redelivered() > 0,
        "un-acked messages were redelivered"
    );
    let first = next_id(&mut consumer).await;
    let mut ids = vec![first];
    while ids.len() < (TOTAL - first + 1) as usize {
        ids.push(next_id(&mut consumer).await);
    }
    assert_eq!(ids, (first..=TOTAL).collect::<Vec<_>>(), "in order, no gap");
    assert!(
        (1..first).all(|id| handled.contains(&id)),
        "every message before {first} was handled by the killed consumer"
    );
    consumer.ack(TOTAL).await.unwrap();
    assert_eq!(q.count().await.unwrap(), 0);
}

/// The answer to a consumer's pipelined acks, within 10 s.
async fn flushed(c: &Consumer) -> busmq_client::Result<()> {
    tokio::time::timeout(Duration::from_secs(10), c.flush_acks())
        .await
        .expect("acks answered within 10 s")
}

#[tokio::test]
async fn pipelined_acks_remove_what_they_cover_and_report_failures() {
    const TOTAL: u64 = 5_000;
    let c = cluster().await;
    let q = c.bus.queue("pipelined-acks");
    q.attach(AttachOptions::default()).await.unwrap();
    let batch: Vec<String> = (1..=TOTAL).map(|i| format!("m{i}")).collect();
    q.push_batch(batch).await.unwrap();
    let mut consumer = q.consume(ConsumeOptions::reliable()).await.unwrap();
    // Acks asked for without waiting, at the end of every received batch.
    for want in 1..=TOTAL {
        assert_eq!(next_id(&mut consumer).await, want);
        if consumer.buffered_len() == 0 {
            consumer.ack_later(want);
        }
    }
    consumer.ack_later(TOTAL);
    flushed(&consumer).await.unwrap();
    assert_eq!(q.count().await.unwrap(), 0, "every message acked");
    drop(consumer);

    // What a dropped consumer asked for is still sent.
    q.push("last").await.unwrap();
    let mut consumer = q.consume(ConsumeOptions::reliable()).await.unwrap();
    assert_eq!(consumer.redelivered(), 0, "nothing was left un-acked");
    assert_eq!(next_id(&mut consumer).await, TOTAL + 1);
    consumer.ack_later(TOTAL + 1);
    drop(consumer);
    let mut left = q.count().await.unwrap();
    for _ in 0..100 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = q.count().await.unwrap();
    }
    assert_eq!(left, 0, "the dropped consumer's ack arrived");

    // An ack the server refuses (an id never delivered) is reported.
    q.push("unacked").await.unwrap();
    let mut consumer = q.consume(ConsumeOptions::reliable()).await.unwrap();
    assert_eq!(next_id(&mut consumer).await, TOTAL + 2);
    consumer.ack_later(TOTAL + 100);
    let err = flushed(&consumer).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound, "{err}");
    assert_eq!(
        q.count().await.unwrap(),
        1,
        "the refused ack removed nothing"
    );
    // A right one after it is sent, and clears the failure.
    consumer.ack_later(TOTAL + 2);
    flushed(&consumer).await.unwrap();
    assert_eq!(q.count().await.unwrap(), 0);
}

#[tokio::test]
async fn two_persistent_readers_each_read_every_message_from_their_index() {
    let c = cluster().await;
    let q = c.bus.queue("feed");
    q.attach(AttachOptions::default()).await.unwrap();
    q.push_batch((1..=30).map(|i| format!("f{i}")))
        .await
        .unwrap();
    let other = Bus::connect(c.broker.url()).await.unwrap();
    let mut from_start = q.consume(ConsumeOptions::persistent(0)).await.unwrap();
    let mut from_21 = other
        .queue("feed")
        .consume(ConsumeOptions::persistent(21))
        .await
        .unwrap();
    q.push_batch((31..=60).map(|i| format!("f{i}")))
        .await
        .unwrap();
    let mut a = Vec::new();
    for _ in 0..60 {
        a.push(next_id(&mut from_start).await);
    }
    let mut b = Vec::new();
    for _ in 21..=60 {
        b.push(next_id(&mut from_21).await);
    }
    assert_eq!(a, (1..=60).collect::<Vec<_>>());
    assert_eq!(b, (21..=60).collect::<Vec<_>>());
    assert_eq!(
        q.count().await.unwrap(),
        60,
        "persistent reads remove nothing"
    );
}

#[tokio::test]
async fn a_queue_without_attachments_expires_after_its_ttl_with_its_messages() {
    let c = cluster().await;
    let q = c.bus.queue("short-lived");
    q.attach(AttachOptions::ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    q.push_batch(["a", "b", "c"]).await.unwrap();
    assert_eq!(q.ttl().await.unwrap(), Some(Duration::from_secs(1)));

    // Attached twice: one detach leaves it alive past the ttl.
    q.attach(AttachOptions::ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    q.detach().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(q.exists().await.unwrap(), "still attached once");

    let mut watcher = q.consume(ConsumeOptions::persistent(0)).await.unwrap();
    for _ in 0..3 {
        next_id(&mut watcher).await;
    }
    q.detach().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), watcher.next())
        .await
        .expect("expiry within 10 s");
    assert!(
        end.is_none(),
        "the consumer's stream ends when the queue expires"
    );
    assert_eq!(watcher.closed(), Some(ClosedReason::Expired));
    assert!(!q.exists().await.unwrap());
    assert!(
        !q.attach(AttachOptions::default()).await.unwrap(),
        "created anew"
    );
    assert_eq!(q.count().await.unwrap(), 0, "the messages expired too");
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_and_the_broker_keeps_serving() {
    let c = cluster().await;
    for bad in ["", "white space", "slash/name", &"n".repeat(201)] {
        let err = c
            .bus
            .queue(bad)
            .attach(AttachOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{bad:?}: {err}");
        assert!(err.to_string().contains("invalid queue name"), "{err}");
    }

    let q = c.bus.queue("strict");
    let not_attached = q.push("x").await.unwrap_err();
    assert_eq!(not_attached.code(), ErrorCode::NotFound, "{not_attached}");

    q.attach(AttachOptions::default()).await.unwrap();
    let too_big = q.push(vec![0u8; 1024 * 1024 + 1]).await.unwrap_err();
    assert_eq!(too_big.code(), ErrorCode::ResourceExhausted, "{too_big}");
    assert!(too_big.to_string().contains("1048577"), "{too_big}");

    let empty = q.push_batch(Vec::<String>::new()).await.unwrap_err();
    assert_eq!(empty.code(), ErrorCode::InvalidArgument, "{empty}");

    let unknown_ack = q.ack(42).await.unwrap_err();
    assert_eq!(unknown_ack.code(), ErrorCode::NotFound, "{unknown_ack}");

    let mut first = q.consume(ConsumeOptions::reliable()).await.unwrap();
    let second = q.consume(ConsumeOptions::reliable()).await.unwrap_err();
    assert_eq!(second.code(), ErrorCode::FailedPrecondition, "{second}");
    first.stop();

    q.close().await.unwrap();
    let closed = q.consume(ConsumeOptions::default()).await.unwrap_err();
    assert_eq!(
        closed.code(),
        ErrorCode::NotFound,
        "consuming a closed queue: {closed}"
    );

    // Everyone else is still served.
    let fine = c.bus.queue("fine");
    fine.attach(AttachOptions::default()).await.unwrap();
    assert_eq!(fine.push("still here").await.unwrap(), 1);
}

/// The services a server lists through reflection protocol `$version`
/// (`v1` or `v1alpha`, whose generated types differ), as debug text.
macro_rules! list_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        format!(
            "{:?}",
            answers.message().await.unwrap().unwrap().message_response
        )
    }};
}

#[tokio::test]
async fn every_server_reports_health_and_serves_reflection() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let c = cluster().await;
    let storage_url = format!("http://{}", c.storage_addr);
    for (url, service) in [
        (c.broker.url(), "busmq.v1.Queues"),
        (c.broker.url(), "busmq.v1.Channels"),
        (storage_url, "busmq.storage.v1.Storage"),
    ] {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(channel.clone());
        for name in ["", service] {
            let status = health
                .check(HealthCheckRequest {
                    service: name.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            assert_eq!(status, ServingStatus::Serving as i32, "{service} {name:?}");
        }

        // Both reflection versions: grpcio-reflection, older grpcurl,
        // Postman and evans speak only v1alpha.
        for (version, listed) in [
            ("v1", list_services!(v1, channel.clone())),
            ("v1alpha", list_services!(v1alpha, channel.clone())),
        ] {
            assert!(
                listed.contains(service),
                "{version}: {service} not listed: {listed}"
            );
            assert!(
                listed.contains("grpc.health.v1.Health"),
                "{version}: {listed}"
            );
        }
    }
}

/// The cells of each line a successful command printed, and the text.
fn cells(out: &std::process::Output) -> (Vec<Vec<String>>, String) {
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines = text
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    (lines, text)
}

/// `busmq ARGS --server URL`, its output.
async fn busmq_cli(url: &str, args: &[&str]) -> std::process::Output {
    busmq(&[args, &["--server", url]].concat()).await
}

#[tokio::test]
async fn busmq_queues_and_channels_print_tables() {
    let c = cluster().await;
    for (name, messages) in [("cli.list.b", 3), ("cli.list.a", 1), ("other", 0)] {
        let q = c.bus.queue(name);
        q.attach(AttachOptions::default()).await.unwrap();
        for i in 0..messages {
            q.push(format!("m{i}")).await.unwrap();
        }
    }
    let url = c.broker.url();
    let out = busmq_cli(&url, &["queues", "--filter", "cli.list"]).await;
    let (lines, text) = cells(&out);
    assert_eq!(
        lines,
        [
            vec![
                "QUEUE",
                "COUNT",
                "PENDING",
                "LEASED",
                "ATTACHMENTS",
                "PUSHED",
                "CONSUMED"
            ],
            vec!["cli.list.a", "1", "0", "0", "1", "1", "0"],
            vec!["cli.list.b", "3", "0", "0", "1", "3", "0"],
        ],
        "{text}"
    );
    let out = busmq_cli(&url, &["queues", "--limit", "1"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2, "a header and one queue: {text}");
    assert!(
        text.contains("cli.list.a"),
        "the first in name order: {text}"
    );
    let bad = busmq_cli(&url, &["queues", "--filter", "no spaces"]).await;
    assert!(!bad.status.success(), "{bad:?}");

    let pubsub = c.bus.pubsub("cli.news");
    let mut events = pubsub.events();
    pubsub.subscribe().await.unwrap();
    let subscribed = tokio::time::timeout(Duration::from_secs(10), events.next()).await;
    assert!(subscribed.is_ok(), "subscribed in time");
    let out = busmq_cli(&url, &["channels"]).await;
    let (lines, text) = cells(&out);
    assert_eq!(
        lines,
        [vec!["CHANNEL", "SUBSCRIBERS"], vec!["cli.news", "1"]],
        "{text}"
    );
}

/// `busmq ARGS`, its output.
async fn busmq(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(busmq_testkit::bin_path("busmq"))
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

/// `busmq health ADDR` as a container healthcheck runs it.
async fn health(addr: &str) -> std::process::Output {
    busmq(&["health", addr, "--timeout", "5"]).await
}

#[tokio::test]
async fn busmq_health_exits_zero_only_while_a_server_is_serving() {
    let c = cluster().await;
    for addr in [c.broker.addr().to_string(), c.storage_addr.to_string()] {
        let out = health(&addr).await;
        assert!(out.status.success(), "{addr}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "SERVING\n");
    }
    // A service the server does not have, and a port nobody listens on.
    let broker = c.broker.addr().to_string();
    let unknown = tokio::process::Command::new(busmq_testkit::bin_path("busmq"))
        .args(["health", &broker, "--service", "no.such.Service"])
        .output()
        .await
        .unwrap();
    assert!(!unknown.status.success(), "{unknown:?}");
    let nobody = health(&busmq_testkit::free_addr().to_string()).await;
    assert!(!nobody.status.success(), "{nobody:?}");
    assert!(
        String::from_utf8_lossy(&nobody.stderr).contains("cannot connect"),
        "{nobody:?}"
    );
}

#[tokio::test]
async fn sigterm_ends_consumers_with_unavailable_and_the_broker_exits_cleanly() {
    let c = cluster().await;
    // Without the SDK's reconnection, to see the status the broker ends
    // the stream with (tests/reconnect.rs covers what the SDK does).
    let q = c
        .bus
        .clone()
        .reconnect(Reconnect::disabled())
        .queue("draining");
    q.attach(AttachOptions::default()).await.unwrap();
    let mut consumer = q.consume(ConsumeOptions::reliable()).await.unwrap();
    q.push("before shutdown").await.unwrap();
    assert_eq!(next_id(&mut consumer).await, 1);

    let status = c.broker.terminate().await.expect("the broker was running");
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    let end = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("the consumer learns of the shutdown");
    match end {
        Some(Err(e)) => assert!(e.is_unavailable(), "UNAVAILABLE so clients reconnect: {e}"),
        other => panic!("expected an UNAVAILABLE error, got {other:?}"),
    }

    // The un-acked message survives in the store for the next broker.
    c.broker.restart().await;
    let bus = Bus::connect(c.broker.url()).await.unwrap();
    let mut again = bus
        .queue("draining")
        .consume(ConsumeOptions::reliable())
        .await
        .unwrap();
    assert_eq!(again.redelivered(), 1);
    assert_eq!(next_id(&mut again).await, 1);
}

#[tokio::test]
async fn one_pusher_and_one_consumer_cover_many_queues() {
    let c = cluster().await;
    let queues: Vec<_> = (0..20).map(|i| c.bus.queue(format!("many.{i}"))).collect();
    for q in &queues {
        q.attach(AttachOptions::default()).await.unwrap();
    }
    let pusher = c
        .bus
        .pusher(&queues, busmq_client::PusherOptions { max_in_flight: 16 })
        .unwrap();
    let mut tickets = Vec::new();
    for round in 0..5u64 {
        for i in 0..queues.len() {
            let batch = (0..3).map(|k| format!("{i}:{}", round * 3 + k + 1));
            tickets.push((i, round, pusher.push_to(i, batch).await.unwrap()));
        }
    }
    for (i, round, ticket) in tickets {
        let ids = ticket.await.unwrap();
        assert_eq!(
            (ids.first, ids.last),
            (round * 3 + 1, round * 3 + 3),
            "queue {i}, round {round}: ids follow push order"
        );
    }
    let refused = pusher.push_to(queues.len(), ["x"]).await.unwrap_err();
    assert_eq!(refused.code(), ErrorCode::InvalidArgument);
    pusher.finish().await.unwrap();
    assert!(queues.iter().all(|q| q.pushed() == 15));
    assert_eq!(
        c.bus
            .pusher(&[], busmq_client::PusherOptions::default())
            .unwrap_err()
            .code(),
        ErrorCode::InvalidArgument
    );

    let mut consumer = c
        .bus
        .consume_many(&queues, ConsumeOptions::reliable())
        .await
        .unwrap();
    let mut next = vec![1u64; queues.len()];
    for _ in 0..15 * queues.len() {
        let got = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a message within 10 s")
            .expect("still open")
            .expect("no error");
        let i = got.queue;
        assert_eq!(got.delivery.id, next[i], "queue {i} in id order");
        assert_eq!(got.delivery.payload, format!("{i}:{}", next[i]));
        next[i] += 1;
        consumer.ack_later(i, got.delivery.id);
    }
    consumer.flush_acks().await.unwrap();
    for q in &queues {
        assert_eq!(q.consumed(), 15);
        assert_eq!(
            q.info().await.unwrap().count,
            0,
            "{}: every ack landed",
            q.name()
        );
    }
    drop(consumer);
    let empty = c.bus.consume_many(&[], ConsumeOptions::default()).await;
    assert_eq!(empty.unwrap_err().code(), ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn ack_many_acks_each_queue_on_its_own_and_refuses_bad_calls_whole() {
    use busmq_proto::v1 as pb;

    let c = cluster().await;
    let queues: Vec<_> = ["am.a", "am.b", "am.c"]
        .iter()
        .map(|n| c.bus.queue(*n))
        .collect();
    for q in &queues {
        q.attach(AttachOptions::default()).await.unwrap();
        q.push_batch((1..=5).map(|i| format!("m{i}")))
            .await
            .unwrap();
    }
    let mut consumer = c
        .bus
        .consume_many(&queues, ConsumeOptions::reliable())
        .await
        .unwrap();
    for _ in 0..15 {
        tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a message within 10 s")
            .expect("still open")
            .expect("no error");
    }
    let count = |i: usize| {
        let q = queues[i].clone();
        async move { q.info().await.unwrap().count }
    };

    let removed: Vec<u64> = consumer
        .ack_many(&[(0, 3), (1, 5)])
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(removed, [3, 5]);
    assert_eq!((count(0).await, count(1).await, count(2).await), (2, 0, 5));

    // Queue c never had id 99 delivered: its ack fails, a's still lands.
    let outcomes = consumer.ack_many(&[(2, 99), (0, 5)]).await.unwrap();
    assert_eq!(
        outcomes[0].as_ref().unwrap_err().code(),
        ErrorCode::NotFound
    );
    assert_eq!(*outcomes[1].as_ref().unwrap(), 2);
    assert_eq!((count(0).await, count(2).await), (0, 5));

    for bad in [&[(2, 1), (2, 2)][..], &[(3, 1)][..]] {
        let err = consumer.ack_many(bad).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{bad:?}: {err}");
    }
    assert_eq!(count(2).await, 5, "a refused call acks nothing");

    // What the server itself refuses whole, for any client.
    let mut raw = pb::queues_client::QueuesClient::connect(c.broker.url())
        .await
        .unwrap();
    let ack = |queue: &str, id| pb::QueueAck {
        queue: queue.into(),
        id,
    };
    for (acks, why) in [
        (vec![ack("am.c", 1), ack("am.c", 2)], "twice"),
        (vec![ack("am.c", 1), ack("am.b", 0)], "ids start at 1"),
        (
            vec![ack("am.c", 1), ack("bad name", 1)],
            "invalid queue name",
        ),
    ] {
        let status = raw.ack_many(pb::AckManyRequest { acks }).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(why), "{status:?}");
    }
    let too_many = (0..100_001).map(|i| ack("am.c", i + 1)).collect();
    let status = raw
        .ack_many(pb::AckManyRequest { acks: too_many })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(count(2).await, 5, "refused calls ack nothing");

    let answer = raw
        .ack_many(pb::AckManyRequest {
            acks: vec![ack("am.nowhere", 1), ack("am.c", 4)],
        })
        .await
        .unwrap()
        .into_inner();
    let failed = match &answer.outcomes[0].outcome {
        Some(pb::ack_outcome::Outcome::Failed(f)) => f,
        other => panic!("an unknown queue's ack fails: {other:?}"),
    };
    assert_eq!(failed.code, tonic::Code::NotFound as i32, "{failed:?}");
    assert_eq!(
        answer.outcomes[1].outcome,
        Some(pb::ack_outcome::Outcome::Removed(4))
    );
    assert_eq!(count(2).await, 1);
}
