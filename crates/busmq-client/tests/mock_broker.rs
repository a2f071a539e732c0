//! The SDK's mechanics (consumer stream, events, counters, pusher pipelining
//! and error fan-out) against a scripted in-process `busmq.v1.Queues`
//! server. Queue semantics are the broker's and are tested against the real
//! one elsewhere; this only checks that the SDK reads and writes the
//! protocol correctly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use busmq_client::{
    AttachOptions, Bus, ClosedReason, ConsumeMode, ConsumeOptions, Error, ErrorCode, ListQueues,
    PusherOptions, QueueEvent, Reconnect,
};
use busmq_proto::v1 as pb;
use busmq_proto::v1::queues_server::{Queues, QueuesServer};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Default)]
struct Mock {
    consume_requests: Mutex<Vec<pb::ConsumeRequest>>,
    attach_requests: Mutex<Vec<pb::AttachRequest>>,
    metadata: Mutex<HashMap<String, String>>,
    /// Set when the server notices a consume call went away.
    consume_cancelled: Arc<tokio::sync::Notify>,
}

fn msg(id: u64) -> pb::Message {
    pb::Message {
        id,
        payload: format!("m{id}").into(),
        attempt: 0,
    }
}

fn event(e: pb::consume_event::Event) -> Result<pb::ConsumeEvent, Status> {
    Ok(pb::ConsumeEvent { event: Some(e) })
}

fn consuming(redelivered: u64) -> Result<pb::ConsumeEvent, Status> {
    event(pb::consume_event::Event::Consuming(pb::Consuming {
        redelivered,
    }))
}

fn batch(ids: std::ops::RangeInclusive<u64>) -> Result<pb::ConsumeEvent, Status> {
    event(pb::consume_event::Event::Messages(pb::MessageBatch {
        messages: ids.map(msg).collect(),
    }))
}

#[tonic::async_trait]
impl Queues for Mock {
    async fn attach(
        &self,
        request: Request<pb::AttachRequest>,
    ) -> Result<Response<pb::AttachResponse>, Status> {
        let request = request.into_inner();
        if request.queue.contains(' ') {
            return Err(Status::invalid_argument("invalid queue name"));
        }
        let existed = request.queue == "old";
        self.attach_requests.lock().unwrap().push(request);
        Ok(Response::new(pb::AttachResponse {
            existed,
            attachments: 1,
        }))
    }

    async fn detach(
        &self,
        _: Request<pb::DetachRequest>,
    ) -> Result<Response<pb::DetachResponse>, Status> {
        Ok(Response::new(pb::DetachResponse { attachments: 0 }))
    }

    async fn push(
        &self,
        request: Request<pb::PushRequest>,
    ) -> Result<Response<pb::PushResponse>, Status> {
        let n = request.into_inner().messages.len() as u64;
        if n == 0 {
            return Err(Status::invalid_argument(
                "a push needs at least one message",
            ));
        }
        Ok(Response::new(pb::PushResponse {
            first_id: 10,
            last_id: 10 + n - 1,
        }))
    }

    type PushStreamStream = BoxStream<pb::PushAck>;

    async fn push_stream(
        &self,
        request: Request<Streaming<pb::PushStreamRequest>>,
    ) -> Result<Response<Self::PushStreamStream>, Status> {
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut next_id = 1;
            let mut held = Vec::new();
            let mut received = 0;
            while let Ok(Some(req)) = input.message().await {
                received += 1;
                let n = req.messages.len() as u64;
                if req.queue == "failing" && received == 3 {
                    let _ = tx
                        .send(Err(Status::resource_exhausted("batch too large")))
                        .await;
                    return;
                }
                let ack = pb::PushAck {
                    sequence: req.sequence,
                    first_id: next_id,
                    last_id: next_id + n - 1,
                };
                next_id += n;
                if req.queue == "pipelined" {
                    // Answer nothing until 4 batches are in: a client that
                    // waits for each answer would hang here.
                    held.push(ack);
                    if held.len() == 4 {
                        for ack in held.drain(..) {
                            let _ = tx.send(Ok(ack)).await;
                        }
                    }
                } else if tx.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ConsumeStream = BoxStream<pb::ConsumeEvent>;
    type ConsumeManyStream = BoxStream<pb::ConsumeManyEvent>;

    async fn consume_many(
        &self,
        _request: Request<pb::ConsumeManyRequest>,
    ) -> Result<Response<Self::ConsumeManyStream>, Status> {
        // These tests cover the one-queue consumer; ConsumeMany is tested
        // against the real broker.
        Err(Status::unimplemented("ConsumeMany is not mocked"))
    }

    async fn consume(
        &self,
        request: Request<pb::ConsumeRequest>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let request = request.into_inner();
        self.consume_requests.lock().unwrap().push(request.clone());
        let events: Vec<Result<pb::ConsumeEvent, Status>> = match request.queue.as_str() {
            "busy" => return Err(Status::failed_precondition("another reliable consumer")),
            "closing" => vec![
                consuming(2),
                batch(1..=2),
                batch(3..=3),
                event(pb::consume_event::Event::Closed(pb::Closed {
                    reason: pb::ClosedReason::Expired as i32,
                })),
            ],
            "broken" => vec![
                consuming(0),
                batch(1..=1),
                Err(Status::unavailable("store unavailable")),
            ],
            "max" => vec![consuming(0), batch(1..=2)],
            "forever" => {
                let (tx, rx) = mpsc::channel(4);
                tx.send(consuming(0)).await.unwrap();
                tx.send(batch(1..=1)).await.unwrap();
                let cancelled = self.consume_cancelled.clone();
                tokio::spawn(async move {
                    tx.closed().await;
                    cancelled.notify_one();
                });
                return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
            }
            _ => vec![consuming(0)],
        };
        Ok(Response::new(Box::pin(futures::stream::iter(events))))
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let Some(pb::ack_request::Target::Id(id)) = request.into_inner().target else {
            return Err(Status::invalid_argument("this mock acks by id only"));
        };
        if id > 100 {
            return Err(Status::not_found("message 101 was never delivered"));
        }
        Ok(Response::new(pb::AckResponse { removed: id }))
    }

    async fn ack_leases(
        &self,
        _: Request<pb::AckLeasesRequest>,
    ) -> Result<Response<pb::AckLeasesResponse>, Status> {
        Err(Status::not_found("no such queue"))
    }

    async fn ack_many(
        &self,
        _: Request<pb::AckManyRequest>,
    ) -> Result<Response<pb::AckManyResponse>, Status> {
        Err(Status::not_found("no such queue"))
    }

    async fn nack(
        &self,
        _: Request<pb::NackRequest>,
    ) -> Result<Response<pb::NackResponse>, Status> {
        Err(Status::not_found("no such lease"))
    }

    async fn close(
        &self,
        _: Request<pb::CloseRequest>,
    ) -> Result<Response<pb::CloseResponse>, Status> {
        Ok(Response::new(pb::CloseResponse { existed: true }))
    }

    async fn flush(
        &self,
        _: Request<pb::FlushRequest>,
    ) -> Result<Response<pb::FlushResponse>, Status> {
        Ok(Response::new(pb::FlushResponse { removed: 4 }))
    }

    /// Five queues `q1`..`q5`, never more than two a page whatever the
    /// limit, so a walk takes several pages.
    async fn list(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let req = request.into_inner();
        let names: Vec<String> = (1..=5)
            .map(|i| format!("q{i}"))
            .filter(|n| n.contains(&req.filter) && *n > req.after)
            .collect();
        let page: Vec<pb::ListedQueue> = names
            .iter()
            .take(2)
            .map(|name| pb::ListedQueue {
                name: name.clone(),
                info: Some(pb::QueueInfo {
                    count: name[1..].parse().unwrap_or(0),
                    ..pb::QueueInfo::default()
                }),
            })
            .collect();
        let next_after = if names.len() > 2 {
            page.last().map(|q| q.name.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListQueuesResponse {
            queues: page,
            next_after,
        }))
    }

    async fn info(
        &self,
        request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::QueueInfo>, Status> {
        if request.into_inner().queue == "missing" {
            return Err(busmq_proto::to_status(busmq_core::Error::QueueNotFound(
                "missing".into(),
            )));
        }
        Ok(Response::new(pb::QueueInfo {
            count: 5,
            ttl: Some(busmq_proto::duration::to_proto(Duration::from_secs(30))),
            attachments: 2,
            pending: 1,
            next_id: 9,
            pushed: 8,
            consumed: 3,
            reliable_consumer: true,
            leased: 0,
            max_deliveries: 0,
        }))
    }

    async fn get_metadata(
        &self,
        request: Request<pb::GetMetadataRequest>,
    ) -> Result<Response<pb::GetMetadataResponse>, Status> {
        let key = request.into_inner().key;
        let value = self.metadata.lock().unwrap().get(&key).cloned();
        Ok(Response::new(pb::GetMetadataResponse { value }))
    }

    async fn set_metadata(
        &self,
        request: Request<pb::SetMetadataRequest>,
    ) -> Result<Response<pb::SetMetadataResponse>, Status> {
        let r = request.into_inner();
        self.metadata.lock().unwrap().insert(r.key, r.value);
        Ok(Response::new(pb::SetMetadataResponse {}))
    }
}

async fn start() -> (Bus, Arc<Mock>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mock = Arc::new(Mock::default());
    let service = QueuesServer::from_arc(mock.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let bus = Bus::connect(format!("http://{addr}")).await.unwrap();
    (bus, mock)
}

async fn next_event(events: &mut busmq_client::QueueEvents) -> QueueEvent {
    tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("event in time")
        .expect("event stream open")
}

#[tokio::test]
async fn attach_detach_events_and_ttl() {
    let (bus, mock) = start().await;
    let q = bus.queue("old");
    let mut events = q.events();
    assert!(
        q.attach(AttachOptions::ttl(Duration::from_millis(2500)))
            .await
            .unwrap()
    );
    assert_eq!(q.detach().await.unwrap(), 0);
    assert!(
        !bus.queue("new")
            .attach(AttachOptions::default())
            .await
            .unwrap()
    );
    assert_eq!(next_event(&mut events).await, QueueEvent::Attaching);
    assert_eq!(
        next_event(&mut events).await,
        QueueEvent::Attached { existed: true }
    );
    assert_eq!(next_event(&mut events).await, QueueEvent::Detaching);
    assert_eq!(next_event(&mut events).await, QueueEvent::Detached);
    let sent = mock.attach_requests.lock().unwrap().clone();
    assert_eq!(sent[0].ttl.map(|d| d.seconds), Some(3));
    assert_eq!(sent[1].ttl, None);
}

#[tokio::test]
async fn server_errors_keep_their_code_and_become_events() {
    let (bus, _mock) = start().await;
    let q = bus.queue("bad name");
    let mut events = q.events();
    let err = q.attach(AttachOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert_eq!(next_event(&mut events).await, QueueEvent::Attaching);
    assert_eq!(
        next_event(&mut events).await,
        QueueEvent::Error("invalid queue name".into())
    );
    let err = bus.queue("q").ack(101).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    let err = bus
        .queue("q")
        .push_batch(Vec::<String>::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn list_queues_pages_and_all_queues_walks_every_page() {
    let (bus, _mock) = start().await;
    let first = bus.list_queues(ListQueues::default()).await.unwrap();
    let names: Vec<&str> = first.queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["q1", "q2"]);
    assert_eq!(first.next_after.as_deref(), Some("q2"));
    assert_eq!(first.queues[1].info.count, 2);
    let last = bus
        .list_queues(ListQueues {
            after: Some("q3".into()),
            ..ListQueues::default()
        })
        .await
        .unwrap();
    assert_eq!(last.next_after, None);
    let all = bus.all_queues(None).await.unwrap();
    let names: Vec<&str> = all.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["q1", "q2", "q3", "q4", "q5"]);
    assert_eq!(bus.all_queues(Some("4")).await.unwrap().len(), 1);
}

#[tokio::test]
async fn info_metadata_and_counters() {
    let (bus, _mock) = start().await;
    let q = bus.queue("q");
    let info = q.info().await.unwrap();
    assert_eq!(info.count, 5);
    assert_eq!(info.ttl, Duration::from_secs(30));
    assert!(info.reliable_consumer);
    assert!(q.exists().await.unwrap());
    assert_eq!(q.count().await.unwrap(), 5);
    assert_eq!(q.ttl().await.unwrap(), Some(Duration::from_secs(30)));
    assert_eq!(bus.queue("missing").ttl().await.unwrap(), None);
    assert!(!bus.queue("missing").exists().await.unwrap());

    assert_eq!(q.metadata("k").await.unwrap(), None);
    q.set_metadata("k", "v").await.unwrap();
    assert_eq!(q.metadata("k").await.unwrap().as_deref(), Some("v"));

    assert_eq!(q.push("a").await.unwrap(), 10);
    let ids = q.push_batch(["b", "c", "d"]).await.unwrap();
    assert_eq!((ids.first, ids.last, ids.len()), (10, 12, 3));
    assert_eq!(q.pushed(), 4);
    assert_eq!(q.clone().pushed(), 4, "clones share counters");
    assert_eq!(q.flush().await.unwrap(), 4);
    let mut events = q.events();
    assert!(q.close().await.unwrap());
    assert_eq!(next_event(&mut events).await, QueueEvent::Closed);
}

#[tokio::test]
async fn consumer_yields_batches_in_order_then_closed() {
    let (bus, mock) = start().await;
    let q = bus.queue("closing");
    let mut events = q.events();
    let mut consumer = q
        .consume(ConsumeOptions::reliable().last(0).max(10).prefetch(8))
        .await
        .unwrap();
    assert!(q.is_consuming());
    assert_eq!(consumer.redelivered(), 2);
    assert_eq!(consumer.mode(), ConsumeMode::Reliable);
    let mut ids = Vec::new();
    while let Some(d) = consumer.next().await {
        let d = d.unwrap();
        assert_eq!(d.payload, format!("m{}", d.id));
        assert_eq!(consumer.ack(d.id).await.unwrap(), d.id);
        ids.push(d.id);
    }
    assert_eq!(ids, vec![1, 2, 3]);
    assert_eq!(consumer.closed(), Some(ClosedReason::Expired));
    assert!(!consumer.is_running());
    assert!(!q.is_consuming());
    assert_eq!(q.consumed(), 3);

    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(next_event(&mut events).await);
    }
    assert_eq!(
        seen,
        vec![
            QueueEvent::Consuming(true),
            QueueEvent::Message { id: 1 },
            QueueEvent::Message { id: 2 },
            QueueEvent::Message { id: 3 },
            QueueEvent::Closed,
            QueueEvent::Consuming(false),
        ]
    );

    let sent = mock.consume_requests.lock().unwrap()[0].clone();
    assert_eq!(sent.mode, pb::ConsumeMode::Reliable as i32);
    assert_eq!(
        (sent.last, sent.max, sent.prefetch),
        (Some(0), Some(10), Some(8))
    );
}

#[tokio::test]
async fn consumer_ends_when_server_ends_after_max() {
    let (bus, _mock) = start().await;
    let consumer = bus
        .queue("max")
        .consume(ConsumeOptions::default().max(2))
        .await
        .unwrap();
    let got: Vec<u64> = consumer.map(|d| d.unwrap().id).collect().await;
    assert_eq!(got, vec![1, 2]);
}

#[tokio::test]
async fn refusal_is_reported_by_consume() {
    let (bus, _mock) = start().await;
    let q = bus.queue("busy");
    let err = q.consume(ConsumeOptions::reliable()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::FailedPrecondition);
    assert!(!q.is_consuming());
    let err = q
        .consume(ConsumeOptions {
            remove: false,
            reliable: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidOptions(_)), "{err}");
}

#[tokio::test]
async fn stream_error_is_yielded_once_then_the_consumer_ends() {
    let (bus, _mock) = start().await;
    let q = bus.reconnect(Reconnect::disabled()).queue("broken");
    let mut consumer = q.consume(ConsumeOptions::default()).await.unwrap();
    assert_eq!(consumer.next().await.unwrap().unwrap().id, 1);
    let err = consumer.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert!(consumer.next().await.is_none());
    // Unreliable consumers ignore acks, as in node-busmq.
    assert_eq!(consumer.ack(1).await.unwrap(), 0);
}

#[tokio::test]
async fn a_broken_stream_is_opened_again() {
    let (bus, _mock) = start().await;
    let q = bus.queue("broken");
    let mut events = q.events();
    let mut consumer = q.consume(ConsumeOptions::default()).await.unwrap();
    assert_eq!(consumer.next().await.unwrap().unwrap().id, 1);
    // The mock breaks the stream with UNAVAILABLE after one message; the
    // second stream starts over with the same message.
    assert_eq!(consumer.next().await.unwrap().unwrap().id, 1);
    assert_eq!(consumer.reconnects(), 1);
    let mut seen = Vec::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(200), events.next()).await
    {
        seen.push(event);
    }
    assert!(
        seen.iter()
            .any(|e| matches!(e, QueueEvent::Reconnecting(_)))
            && seen.contains(&QueueEvent::Reconnected),
        "{seen:?}"
    );
}

#[tokio::test]
async fn stop_and_drop_cancel_the_call() {
    let (bus, mock) = start().await;
    let q = bus.queue("forever");
    let mut events = q.events();
    let mut consumer = q.consume(ConsumeOptions::default()).await.unwrap();
    assert_eq!(next_event(&mut events).await, QueueEvent::Consuming(true));
    consumer.stop();
    assert_eq!(next_event(&mut events).await, QueueEvent::Consuming(false));
    // Nothing of the first batch had been read off the wire yet.
    assert!(consumer.next().await.is_none());
    tokio::time::timeout(Duration::from_secs(5), mock.consume_cancelled.notified())
        .await
        .expect("the server saw the call end");

    let consumer = q.consume(ConsumeOptions::default()).await.unwrap();
    assert!(q.is_consuming());
    drop(consumer);
    assert!(!q.is_consuming());
    assert_eq!(next_event(&mut events).await, QueueEvent::Consuming(true));
    assert_eq!(next_event(&mut events).await, QueueEvent::Consuming(false));
    tokio::time::timeout(Duration::from_secs(5), mock.consume_cancelled.notified())
        .await
        .expect("the server saw the call end");
}

#[tokio::test]
async fn pusher_pipelines_batches() {
    let (bus, _mock) = start().await;
    let q = bus.queue("pipelined");
    let pusher = q.pusher(PusherOptions { max_in_flight: 4 });
    let mut tickets = Vec::new();
    for i in 0..8u64 {
        let batch: Vec<String> = (0..=i).map(|j| format!("{i}.{j}")).collect();
        let ticket = tokio::time::timeout(Duration::from_secs(5), pusher.push(batch))
            .await
            .expect("a slot frees up once the server answers")
            .unwrap();
        tickets.push(ticket);
    }
    let mut expected_first = 1;
    for (i, ticket) in tickets.into_iter().enumerate() {
        let ids = ticket.await.unwrap();
        assert_eq!(ids.first, expected_first);
        assert_eq!(ids.len(), i as u64 + 1);
        expected_first = ids.last + 1;
    }
    assert_eq!(q.pushed(), (1..=8).sum::<u64>());
    pusher.finish().await.unwrap();
}

#[tokio::test]
async fn pusher_failure_reaches_every_waiter() {
    let (bus, _mock) = start().await;
    let q = bus.queue("failing");
    let mut events = q.events();
    let pusher = q.pusher(PusherOptions::default());
    let empty = pusher.push(Vec::<String>::new()).await.unwrap_err();
    assert_eq!(empty.code(), ErrorCode::InvalidArgument);
    let mut tickets = Vec::new();
    for _ in 0..5 {
        match pusher.push(["x", "y"]).await {
            Ok(ticket) => tickets.push(ticket),
            // The stream may already have failed.
            Err(err) => assert_eq!(err.code(), ErrorCode::ResourceExhausted),
        }
    }
    let results: Vec<_> = futures::future::join_all(tickets).await;
    assert_eq!(
        *results[0].as_ref().unwrap(),
        busmq_client::IdRange { first: 1, last: 2 }
    );
    assert_eq!(
        *results[1].as_ref().unwrap(),
        busmq_client::IdRange { first: 3, last: 4 }
    );
    for r in &results[2..] {
        assert_eq!(r.as_ref().unwrap_err().code(), ErrorCode::ResourceExhausted);
    }
    let later = pusher.push(["z"]).await.unwrap_err();
    assert_eq!(later.code(), ErrorCode::ResourceExhausted);
    assert_eq!(
        pusher.finish().await.unwrap_err().code(),
        ErrorCode::ResourceExhausted
    );
    assert_eq!(q.pushed(), 4);
    assert_eq!(
        next_event(&mut events).await,
        QueueEvent::Error("batch too large".into())
    );
}
