//! Pub/sub across real processes: brokers sharing one store (through one
//! `busmq-storage` process, or through two storage processes on one Redis),
//! driven through the Rust SDK and the `busmq` CLI.

use std::process::Stdio;
use std::time::Duration;

use busmq_client::{Bus, Bytes, ErrorCode, PubSub, PubSubEvent, PubSubEvents};
use busmq_testkit::Process;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(10);

/// The next event that is not `Missed`, within [`WAIT`].
async fn next_event(events: &mut PubSubEvents) -> PubSubEvent {
    tokio::time::timeout(WAIT, events.next())
        .await
        .expect("an event within 10 s")
        .expect("the event stream is open")
}

/// Subscribes `pubsub` and returns its events, the first (`Subscribed`)
/// already read.
async fn subscribed(pubsub: &PubSub) -> PubSubEvents {
    let mut events = pubsub.events();
    pubsub.subscribe().await.expect("subscribe");
    assert_eq!(next_event(&mut events).await, PubSubEvent::Subscribed);
    assert!(pubsub.is_subscribed());
    events
}

async fn expect_message(events: &mut PubSubEvents, want: &str) {
    assert_eq!(
        next_event(events).await,
        PubSubEvent::Message(Bytes::from(want.to_owned()))
    );
}

/// Publishes until the count is `want` (a subscriber's departure reaches
/// the store asynchronously); returns how many publishes it took.
async fn publish_until(pubsub: &PubSub, message: &str, want: u64) -> usize {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tries = 0;
    loop {
        tries += 1;
        let got = pubsub.publish(message.to_owned()).await.unwrap();
        if got == want {
            return tries;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {got} receivers, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two brokers on one store: subscribers on both receive what is published
/// on either, the count covers both, and an unsubscribed handle stops
/// receiving and counting.
async fn two_brokers_share_pubsub(broker_a: &Process, broker_b: &Process) {
    let a = Bus::connect(broker_a.url()).await.unwrap();
    let b = Bus::connect(broker_b.url()).await.unwrap();
    let on_a = a.pubsub("news");
    let on_b = b.pubsub("news");
    let leaving = b.pubsub("news");
    let mut events_a = subscribed(&on_a).await;
    let mut events_b = subscribed(&on_b).await;
    let mut events_leaving = subscribed(&leaving).await;

    assert_eq!(b.pubsub("news").publish("from b").await.unwrap(), 3);
    assert_eq!(a.pubsub("news").publish("from a").await.unwrap(), 3);
    for events in [&mut events_a, &mut events_b, &mut events_leaving] {
        expect_message(events, "from b").await;
        expect_message(events, "from a").await;
    }
    assert_eq!(a.pubsub("other").publish("elsewhere").await.unwrap(), 0);

    leaving.unsubscribe();
    assert!(!leaving.is_subscribed());
    assert_eq!(
        next_event(&mut events_leaving).await,
        PubSubEvent::Unsubscribed
    );
    let tries = publish_until(&a.pubsub("news"), "after", 2).await;
    for events in [&mut events_a, &mut events_b] {
        for _ in 0..tries {
            expect_message(events, "after").await;
        }
    }
    // Nothing reaches the unsubscribed handle any more.
    assert_eq!(
        tokio::time::timeout(Duration::from_millis(300), events_leaving.next())
            .await
            .ok(),
        None,
        "no event after Unsubscribed"
    );
    // Subscribing again works, through the same handle.
    let mut again = subscribed(&leaving).await;
    assert_eq!(a.pubsub("news").publish("back").await.unwrap(), 3);
    expect_message(&mut again, "back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_one_broker_reaches_another_through_a_storage_process() {
    let storage = busmq_testkit::storage().await;
    let broker_a = busmq_testkit::broker(storage.addr()).await;
    let broker_b = busmq_testkit::broker(storage.addr()).await;
    two_brokers_share_pubsub(&broker_a, &broker_b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_one_broker_reaches_another_through_redis() {
    let redis = busmq_testkit::redis::redis_server().await;
    // Each broker has its own storage process; they share only Redis.
    let storage_a = busmq_testkit::storage_on(&redis.url()).await;
    let storage_b = busmq_testkit::storage_on(&redis.url()).await;
    let broker_a = busmq_testkit::broker(storage_a.addr()).await;
    let broker_b = busmq_testkit::broker(storage_b.addr()).await;
    two_brokers_share_pubsub(&broker_a, &broker_b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_not_stored_and_bad_names_are_refused() {
    let storage = busmq_testkit::storage().await;
    let broker = busmq_testkit::broker(storage.addr()).await;
    let bus = Bus::connect(broker.url()).await.unwrap();
    let p = bus.pubsub("quiet");
    assert_eq!(p.publish("nobody listens").await.unwrap(), 0);
    let s = bus.pubsub("quiet");
    let mut events = subscribed(&s).await;
    assert_eq!(p.publish("now").await.unwrap(), 1);
    expect_message(&mut events, "now").await;

    for bad in ["has space", "", "sl/ash"] {
        let bad_pubsub = bus.pubsub(bad);
        let err = bad_pubsub.publish("x").await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{bad:?}: {err}");
        assert!(
            err.to_string().contains("invalid channel name"),
            "{bad:?}: {err}"
        );
        let mut bad_events = bad_pubsub.events();
        let err = bad_pubsub.subscribe().await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{bad:?}: {err}");
        assert!(!bad_pubsub.is_subscribed());
        assert!(matches!(
            next_event(&mut bad_events).await,
            PubSubEvent::Error(e) if e.contains("invalid channel name")
        ));
    }
}

/// Subscribes through `bus`, kills and restarts `process` (the broker or
/// the storage behind it), and checks the subscription comes back: the SDK
/// reports the loss, stays subscribed, subscribes again once `process` is
/// back, and messages flow again. What was published meanwhile is lost
/// (pub/sub stores nothing).
async fn subscription_survives_restart_of(bus: &Bus, process: &Process) -> (PubSub, PubSubEvents) {
    let s = bus.pubsub("fragile");
    let mut events = subscribed(&s).await;
    process.kill9();
    assert!(matches!(
        next_event(&mut events).await,
        PubSubEvent::Error(_)
    ));
    assert!(s.is_subscribed(), "still subscribed: renewing");
    process.restart().await;
    assert_eq!(next_event(&mut events).await, PubSubEvent::Subscribed);
    assert!(s.is_subscribed());
    assert_eq!(bus.pubsub("fragile").publish("back").await.unwrap(), 1);
    expect_message(&mut events, "back").await;
    (s, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_comes_back_after_a_broker_restart() {
    let storage = busmq_testkit::storage().await;
    let broker = busmq_testkit::broker(storage.addr()).await;
    let bus = Bus::connect(broker.url()).await.unwrap();
    let (s, mut events) = subscription_survives_restart_of(&bus, &broker).await;
    // Unsubscribing ends it for good.
    s.unsubscribe();
    assert_eq!(next_event(&mut events).await, PubSubEvent::Unsubscribed);
    publish_until(&bus.pubsub("fragile"), "gone", 0).await;
}

/// The broker's own subscription to the store breaks when the storage
/// process restarts; the SDK hears of it through the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_comes_back_after_a_storage_restart() {
    let storage = busmq_testkit::storage().await;
    let broker = busmq_testkit::broker(storage.addr()).await;
    let bus = Bus::connect(broker.url()).await.unwrap();
    subscription_survives_restart_of(&bus, &storage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_publish_and_subscribe_round_trip() {
    let storage = busmq_testkit::storage().await;
    let broker = busmq_testkit::broker(storage.addr()).await;
    let mut subscriber = tokio::process::Command::new(busmq_testkit::bin_path("busmq"))
        .args(["subscribe", "cli-news", "--count", "2", "--server"])
        .arg(broker.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(subscriber.stderr.take().unwrap()).lines();
    let ready = tokio::time::timeout(WAIT, stderr.next_line())
        .await
        .expect("the subscriber reports within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(ready, "busmq: subscribed to cli-news");

    let publish = |message: &'static str| {
        let url = broker.url();
        async move {
            let out = tokio::process::Command::new(busmq_testkit::bin_path("busmq"))
                .args(["publish", "cli-news", message, "--server", &url])
                .output()
                .await
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        }
    };
    assert_eq!(publish("hello\tworld").await, "1\n");
    assert_eq!(publish("second").await, "1\n");
    let out = tokio::time::timeout(WAIT, subscriber.wait_with_output())
        .await
        .expect("the subscriber stops after --count 2")
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "hello\\tworld\nsecond\n"
    );
    // The subscriber is gone, and with it its subscription.
    let bus = Bus::connect(broker.url()).await.unwrap();
    publish_until(&bus.pubsub("cli-news"), "gone", 0).await;
}
