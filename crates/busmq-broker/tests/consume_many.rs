//! ConsumeMany: one stream consuming many queues, each with the semantics of
//! its own Consume stream, over an in-process store and over a storage
//! process.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use busmq_proto::v1::{
    self, ConsumeManyEvent, ConsumeManyRequest, ConsumeMode, consume_event::Event,
};
use common::{Broker, broker, msgs, req};
use tonic::{Code, Streaming};

/// What one queue of a many-queue stream received, by position.
#[derive(Debug, Default)]
struct Received {
    consuming: Option<u64>,
    ids: Vec<u64>,
    payloads: Vec<String>,
    closed: Option<v1::ClosedReason>,
}

struct Many {
    stream: Streaming<ConsumeManyEvent>,
    queues: BTreeMap<u32, Received>,
    /// Events received, and how many of them named more than one queue.
    events: usize,
    shared_events: usize,
}

impl Many {
    /// Reads one event; false when the stream ended.
    async fn read(&mut self) -> Result<bool, tonic::Status> {
        let event = tokio::time::timeout(Duration::from_secs(10), self.stream.message())
            .await
            .expect("an event within 10 s")?;
        let Some(event) = event else {
            return Ok(false);
        };
        self.events += 1;
        let mut named: Vec<u32> = event.events.iter().map(|e| e.queue).collect();
        named.dedup();
        if named.len() > 1 {
            self.shared_events += 1;
        }
        for part in event.events {
            let got = self.queues.entry(part.queue).or_default();
            match part.event.and_then(|e| e.event).expect("an event") {
                Event::Consuming(c) => got.consuming = Some(c.redelivered),
                Event::Messages(batch) => {
                    assert!(got.closed.is_none(), "messages after closed");
                    for m in batch.messages {
                        got.ids.push(m.id);
                        got.payloads
                            .push(String::from_utf8(m.payload.to_vec()).unwrap());
                    }
                }
                Event::Closed(c) => got.closed = Some(c.reason()),
            }
        }
        Ok(true)
    }

    /// Reads until every queue of `want` (position → message count) has at
    /// least that many messages.
    async fn until(&mut self, want: &[(u32, usize)]) {
        while want
            .iter()
            .any(|(q, n)| self.queues.get(q).map_or(0, |r| r.ids.len()) < *n)
        {
            assert!(self.read().await.unwrap(), "stream ended early");
        }
    }

    fn ids(&self, queue: u32) -> &[u64] {
        &self.queues[&queue].ids
    }
}

impl Broker {
    async fn consume_many(
        &self,
        queues: Vec<v1::ConsumeRequest>,
        prefetch: Option<u32>,
    ) -> Result<Many, tonic::Status> {
        let stream = self
            .client
            .clone()
            .consume_many(ConsumeManyRequest { queues, prefetch })
            .await?
            .into_inner();
        let mut many = Many {
            stream,
            queues: BTreeMap::new(),
            events: 0,
            shared_events: 0,
        };
        // The first event starts every queue; a refusal arrives instead.
        assert!(many.read().await?, "stream ended before consuming");
        Ok(many)
    }

    async fn close(&self, queue: &str) {
        self.client
            .clone()
            .close(v1::CloseRequest {
                queue: queue.into(),
            })
            .await
            .unwrap();
    }
}

fn names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("many.{i}")).collect()
}

/// `count` attached queues, each holding messages `m0..m{messages}`.
async fn filled(b: &Broker, count: usize, messages: u32) -> Vec<String> {
    let names = names(count);
    for n in &names {
        b.attach(n).await;
        if messages > 0 {
            b.push(n, msgs(0..messages)).await.unwrap();
        }
    }
    names
}

fn requests(names: &[String], mode: ConsumeMode) -> Vec<v1::ConsumeRequest> {
    names.iter().map(|n| req(n, mode)).collect()
}

async fn one_stream_delivers_every_queue_in_order_several_queues_per_event() {
    let b = broker().await;
    let names = filled(&b, 50, 10).await;
    let mut many = b
        .consume_many(requests(&names, ConsumeMode::Unreliable), None)
        .await
        .unwrap();
    for q in 0..50 {
        assert_eq!(many.queues[&q].consuming, Some(0), "queue {q} started");
    }
    let want: Vec<(u32, usize)> = (0..50).map(|q| (q, 10)).collect();
    many.until(&want).await;
    for q in 0..50u32 {
        assert_eq!(many.ids(q), (1..=10).collect::<Vec<u64>>(), "queue {q}");
        assert_eq!(many.queues[&q].payloads[0], "m0");
    }
    assert!(
        many.shared_events >= 1,
        "500 waiting messages of 50 queues arrive in events that carry several queues"
    );
    for n in &names {
        assert_eq!(b.info(n).await.count, 0, "unreliable takes removed them");
    }

    // Later pushes wake the stream, whichever queue they go to.
    b.push(&names[37], msgs(10..13)).await.unwrap();
    b.push(&names[3], msgs(10..11)).await.unwrap();
    many.until(&[(37, 13), (3, 11)]).await;
    assert_eq!(&many.ids(37)[10..], &[11, 12, 13]);
    assert_eq!(many.queues[&37].payloads[12], "m12");
}

async fn queues_holding_less_than_their_prefetch_share_events() {
    // Each queue may take the whole frame's worth (per-queue prefetch as
    // large as the frame's), but holds 5 messages: a round asks as many
    // queues as fill the frame, instead of one queue per round.
    let b = broker().await;
    let names = filled(&b, 200, 5).await;
    let mut queues = requests(&names, ConsumeMode::Unreliable);
    for q in &mut queues {
        q.prefetch = Some(1024);
    }
    let mut many = b.consume_many(queues, Some(1024)).await.unwrap();
    let want: Vec<(u32, usize)> = (0..200).map(|q| (q, 5)).collect();
    many.until(&want).await;
    for q in 0..200u32 {
        assert_eq!(many.ids(q), &[1, 2, 3, 4, 5], "queue {q}");
    }
    assert!(
        many.events < 100,
        "1,000 messages of 200 queues took {} events",
        many.events
    );
}

async fn large_messages_of_many_queues_arrive_in_frames_a_default_client_accepts() {
    // Three queues of 16 messages of 512 KiB: one round takes 24 MiB,
    // which goes out cut into frames under the test client's 4 MiB limit.
    let b = broker().await;
    let names = filled(&b, 3, 0).await;
    let payload = bytes::Bytes::from(vec![1u8; 512 << 10]);
    for n in &names {
        b.push(n, vec![payload.clone(); 16]).await.unwrap();
    }
    let mut queues = requests(&names, ConsumeMode::Unreliable);
    for q in &mut queues {
        q.prefetch = Some(1024);
    }
    let mut many = b.consume_many(queues, Some(4096)).await.unwrap();
    many.until(&[(0, 16), (1, 16), (2, 16)]).await;
    for q in 0..3 {
        assert_eq!(many.ids(q), (1..=16).collect::<Vec<u64>>(), "queue {q}");
    }
    assert!(many.events > 6, "24 MiB in {} events", many.events);
}

async fn an_event_holds_at_most_prefetch_messages_and_each_queue_its_own_prefetch() {
    let b = broker().await;
    let names = filled(&b, 4, 100).await;
    let mut queues = requests(&names, ConsumeMode::Unreliable);
    for q in &mut queues {
        q.prefetch = Some(7);
    }
    let mut many = b.consume_many(queues, Some(20)).await.unwrap();
    let mut largest = 0;
    while many.queues.values().map(|r| r.ids.len()).sum::<usize>() < 400 {
        let before: Vec<usize> = (0..4).map(|q| many.ids(q).len()).collect();
        assert!(many.read().await.unwrap());
        let grown: Vec<usize> = (0..4)
            .map(|q| many.ids(q).len() - before[q as usize])
            .collect();
        assert!(
            grown.iter().all(|&n| n <= 7),
            "per-queue prefetch: {grown:?}"
        );
        largest = largest.max(grown.iter().sum::<usize>());
    }
    assert!(largest <= 20, "an event carried {largest} messages");
    for q in 0..4 {
        assert_eq!(many.ids(q), (1..=100).collect::<Vec<u64>>());
    }
}

async fn a_queue_at_its_max_ends_alone_and_the_stream_ends_with_the_last() {
    let b = broker().await;
    let names = filled(&b, 2, 0).await;
    let mut queues = requests(&names, ConsumeMode::Unreliable);
    for q in &mut queues {
        q.max = Some(3);
    }
    let mut many = b.consume_many(queues, None).await.unwrap();
    b.push(&names[0], msgs(0..5)).await.unwrap();
    many.until(&[(0, 3)]).await;
    b.push(&names[1], msgs(0..5)).await.unwrap();
    many.until(&[(1, 3)]).await;
    assert!(
        !many.read().await.unwrap(),
        "every queue done: the stream ends"
    );
    assert_eq!(many.ids(0), &[1, 2, 3]);
    assert_eq!(many.ids(1), &[1, 2, 3]);
    for n in &names {
        assert_eq!(b.info(n).await.count, 2, "nothing past max was taken");
    }
}

async fn closing_one_queue_closes_only_it() {
    let b = broker().await;
    let names = filled(&b, 2, 0).await;
    let mut many = b
        .consume_many(requests(&names, ConsumeMode::Unreliable), None)
        .await
        .unwrap();
    b.close(&names[0]).await;
    while many.queues[&0].closed.is_none() {
        assert!(many.read().await.unwrap());
    }
    assert_eq!(many.queues[&0].closed, Some(v1::ClosedReason::Closed));
    b.push(&names[1], msgs(0..2)).await.unwrap();
    many.until(&[(1, 2)]).await;
    assert_eq!(many.queues[&1].closed, None);
}

/// Queues that vanish while the stream is taking from them end one by one
/// with `closed`, whichever way the broker learns it (the close
/// notification, or a take answered "no such queue" before that arrives);
/// the other queues go on. In a split deployment the second way crosses the
/// storage hop, so this holds only if the error keeps its reason there.
async fn queues_closed_while_their_messages_flow_end_alone() {
    const CLOSED: u32 = 20;
    let b = broker().await;
    let names = filled(&b, CLOSED as usize + 1, 0).await;
    // A prefetch of one keeps a take of every queue in flight.
    let mut many = b
        .consume_many(requests(&names, ConsumeMode::Unreliable), Some(1))
        .await
        .unwrap();
    for n in &names[..CLOSED as usize] {
        b.push(n, msgs(0..200)).await.unwrap();
    }
    for n in &names[..CLOSED as usize] {
        b.close(n).await;
    }
    while (0..CLOSED).any(|q| many.queues.get(&q).and_then(|r| r.closed).is_none()) {
        assert!(many.read().await.unwrap(), "the stream ended");
    }
    for q in 0..CLOSED {
        assert_eq!(many.queues[&q].closed, Some(v1::ClosedReason::Closed));
    }
    b.push(&names[CLOSED as usize], msgs(0..3)).await.unwrap();
    many.until(&[(CLOSED, 3)]).await;
    assert_eq!(many.queues[&CLOSED].closed, None);
}

async fn reliable_queues_hold_their_locks_until_the_stream_ends() {
    let b = broker().await;
    let names = filled(&b, 2, 4).await;
    let mut many = b
        .consume_many(requests(&names, ConsumeMode::Reliable), None)
        .await
        .unwrap();
    many.until(&[(0, 4), (1, 4)]).await;
    assert_eq!(b.ack(&names[0], 4).await.unwrap(), 4);
    assert_eq!(b.ack(&names[1], 2).await.unwrap(), 2);
    let refused = b
        .consume(req(&names[1], ConsumeMode::Reliable))
        .await
        .err()
        .expect("a second reliable consumer is refused");
    assert_eq!(refused.code(), Code::FailedPrecondition);

    drop(many);
    // The lock goes with the stream: the next consumer gets what was not
    // acked, once the broker has seen the stream end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut next = loop {
        match b.consume(req(&names[1], ConsumeMode::Reliable)).await {
            Ok(c) => break c,
            Err(s) if s.code() == Code::FailedPrecondition => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "lock never released"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("{s}"),
        }
    };
    assert_eq!(next.redelivered, 2);
    let ids: Vec<u64> = next.take(2).await.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![3, 4]);
}

async fn a_lease_stream_gives_unacked_leases_back_when_it_ends() {
    let b = broker().await;
    let names = filled(&b, 2, 3).await;
    let mut many = b
        .consume_many(requests(&names, ConsumeMode::Lease), None)
        .await
        .unwrap();
    many.until(&[(0, 3), (1, 3)]).await;
    assert_eq!(b.info(&names[0]).await.leased, 3);
    drop(many);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for n in &names {
        while b.info(n).await.leased > 0 {
            assert!(tokio::time::Instant::now() < deadline, "leases kept");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(b.info(n).await.count, 3, "given back, not lost");
    }
}

async fn leases_that_run_out_come_back_on_the_same_stream_without_a_push() {
    let b = broker().await;
    let names = filled(&b, 3, 2).await;
    let mut queues = requests(&names, ConsumeMode::Lease);
    for q in &mut queues[..2] {
        q.visibility_timeout = Some(common::millis(300));
    }
    queues[2].visibility_timeout = Some(common::millis(60_000));
    let mut many = b.consume_many(queues, None).await.unwrap();
    many.until(&[(0, 2), (1, 2), (2, 2)]).await;
    // Nothing is acked: the short leases run out and their messages are
    // delivered again, the long one's not.
    many.until(&[(0, 4), (1, 4)]).await;
    assert_eq!(many.ids(0), &[1, 2, 1, 2]);
    assert_eq!(many.ids(1), &[1, 2, 1, 2]);
    assert_eq!(many.ids(2), &[1, 2]);
}

async fn persistent_readers_of_many_queues_each_read_everything() {
    let b = broker().await;
    let names = filled(&b, 3, 5).await;
    let mut first = b
        .consume_many(requests(&names, ConsumeMode::Persistent), None)
        .await
        .unwrap();
    let mut second = b
        .consume_many(requests(&names, ConsumeMode::Persistent), None)
        .await
        .unwrap();
    let want = [(0, 5), (1, 5), (2, 5)];
    first.until(&want).await;
    second.until(&want).await;
    for q in 0..3 {
        assert_eq!(first.ids(q), second.ids(q));
        assert_eq!(first.ids(q), &[1, 2, 3, 4, 5]);
    }
}

async fn a_push_to_any_of_a_thousand_idle_queues_wakes_the_stream() {
    let b = broker().await;
    let names = filled(&b, 1000, 0).await;
    let mut many = b
        .consume_many(requests(&names, ConsumeMode::Unreliable), None)
        .await
        .unwrap();
    for q in [777u32, 0, 999] {
        b.push(&names[q as usize], msgs(0..1)).await.unwrap();
        many.until(&[(q, 1)]).await;
        assert_eq!(many.ids(q), &[1]);
    }
}

async fn bad_requests_get_clear_errors() {
    let b = broker().await;
    let names = filled(&b, 2, 0).await;
    let unreliable = |names: &[String]| requests(names, ConsumeMode::Unreliable);
    let code = |r: Result<Many, tonic::Status>| r.err().expect("refused").code();

    assert_eq!(
        code(b.consume_many(Vec::new(), None).await),
        Code::InvalidArgument
    );
    let twice = vec![names[0].clone(), names[1].clone(), names[0].clone()];
    let refused = b
        .consume_many(unreliable(&twice), None)
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("named twice"),
        "{}",
        refused.message()
    );
    assert_eq!(
        code(b.consume_many(unreliable(&names), Some(0)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(b.consume_many(unreliable(&names), Some(65_537)).await),
        Code::InvalidArgument
    );
    let mut zero_max = unreliable(&names);
    zero_max[1].max = Some(0);
    assert_eq!(
        code(b.consume_many(zero_max, None).await),
        Code::InvalidArgument
    );
    let bad_name = vec![names[0].clone(), "no spaces allowed".to_owned()];
    assert_eq!(
        code(b.consume_many(unreliable(&bad_name), None).await),
        Code::InvalidArgument
    );
    let missing = vec![names[0].clone(), "never.attached".to_owned()];
    let refused = b
        .consume_many(unreliable(&missing), None)
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Code::NotFound);
    assert!(
        refused.message().contains("never.attached"),
        "{}",
        refused.message()
    );

    // A reliable refusal on one queue refuses the stream, and the others'
    // locks are not left behind.
    let holder = b
        .consume(req(&names[1], ConsumeMode::Reliable))
        .await
        .unwrap();
    assert_eq!(
        code(
            b.consume_many(requests(&names, ConsumeMode::Reliable), None)
                .await
        ),
        Code::FailedPrecondition
    );
    drop(holder);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b
        .consume(req(&names[0], ConsumeMode::Reliable))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue 0's lock kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The broker still serves.
    let mut many = b.consume_many(unreliable(&names), None).await.unwrap();
    b.push(&names[0], msgs(0..1)).await.unwrap();
    many.until(&[(0, 1)]).await;
}

busmq_testkit::in_both_deployments!(
    one_stream_delivers_every_queue_in_order_several_queues_per_event,
    queues_holding_less_than_their_prefetch_share_events,
    large_messages_of_many_queues_arrive_in_frames_a_default_client_accepts,
    an_event_holds_at_most_prefetch_messages_and_each_queue_its_own_prefetch,
    a_queue_at_its_max_ends_alone_and_the_stream_ends_with_the_last,
    closing_one_queue_closes_only_it,
    queues_closed_while_their_messages_flow_end_alone,
    reliable_queues_hold_their_locks_until_the_stream_ends,
    a_lease_stream_gives_unacked_leases_back_when_it_ends,
    leases_that_run_out_come_back_on_the_same_stream_without_a_push,
    persistent_readers_of_many_queues_each_read_everything,
    a_push_to_any_of_a_thousand_idle_queues_wakes_the_stream,
    bad_requests_get_clear_errors,
);
