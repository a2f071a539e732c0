//! The `Session` stream against an in-process storage server: bad input
//! gets a clear error and never stops other operations, answers match
//! requests by id, and [`RemoteStorage`] sends pushes too large for a
//! session as unary calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use busmq_core::{ErrorCode, Limits};
use busmq_proto::storage::v1 as pb;
use busmq_proto::storage::v1::storage_client::StorageClient;
use busmq_storage::memory::MemoryStorage;
use busmq_storage::remote::RemoteStorage;
use busmq_storage::{QueueName, Storage, TakeMode};
use bytes::{BufMut, Bytes};
use pb::session_request::Op;
use pb::session_response::Result as Answer;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// Every wait in here is a guard against a hang, not a measurement.
const GUARD: Duration = Duration::from_secs(10);

struct Server {
    url: String,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn server(limits: Limits) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(busmq_storage::server::serve(
        listener,
        Arc::new(MemoryStorage::new()),
        limits,
        shutdown.clone(),
    ));
    Server { url, shutdown }
}

async fn channel(url: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn queue(name: &str) -> QueueName {
    QueueName::parse(name, &Limits::default()).unwrap()
}

/// One typed session: requests go in, answers come out.
struct TypedSession {
    requests: mpsc::Sender<pb::SessionRequest>,
    answers: Streaming<pb::SessionResponse>,
}

impl TypedSession {
    async fn open(channel: Channel) -> Self {
        let (requests, rx) = mpsc::channel(16);
        let answers = StorageClient::new(channel)
            .session(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        TypedSession { requests, answers }
    }

    /// Sends every request, then collects as many answers, by id.
    async fn run(&mut self, ops: Vec<(u64, Option<Op>)>) -> HashMap<u64, Answer> {
        let n = ops.len();
        for (id, op) in ops {
            self.requests
                .send(pb::SessionRequest {
                    id,
                    op,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let mut answers = HashMap::new();
        while answers.len() < n {
            let answer = tokio::time::timeout(GUARD, self.answers.message())
                .await
                .expect("answered")
                .unwrap()
                .expect("session open");
            answers.insert(answer.id, answer.result.expect("a result"));
        }
        answers
    }
}

fn push(queue: &str, messages: Vec<Bytes>) -> Option<Op> {
    Some(Op::Push(pb::PushRequest {
        queue: queue.to_owned(),
        messages: Some(busmq_storage::wire::pack(&messages)),
    }))
}

fn take(queue: &str, max: u32) -> Option<Op> {
    Some(Op::Take(pb::TakeRequest {
        queue: queue.to_owned(),
        max,
        mode: pb::TakeMode::Remove.into(),
    }))
}

fn error_code(answer: &Answer) -> Code {
    match answer {
        Answer::Error(e) => Code::from(e.code),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_fail_alone_and_the_session_goes_on() {
    let server = server(Limits::default()).await;
    let channel = channel(&server.url).await;
    let mut client = StorageClient::new(channel.clone());
    client
        .attach(pb::AttachRequest {
            queue: "q".into(),
            ttl: Some(busmq_proto::prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
        })
        .await
        .unwrap();
    let mut session = TypedSession::open(channel).await;
    let answers = session
        .run(vec![
            (1, None),
            (2, push("bad name", vec![Bytes::from_static(b"x")])),
            (3, push("q", vec![])),
            (4, push("q", vec![Bytes::from(vec![0u8; (1 << 20) + 1])])),
            (
                5,
                Some(Op::Ack(busmq_proto::v1::QueueAck {
                    queue: "q".into(),
                    id: 7,
                })),
            ),
            (6, push("missing", vec![Bytes::from_static(b"x")])),
        ])
        .await;
    assert_eq!(error_code(&answers[&1]), Code::InvalidArgument);
    let Answer::Error(unknown) = &answers[&1] else {
        unreachable!()
    };
    assert!(unknown.message.contains("no operation"), "{unknown:?}");
    assert_eq!(error_code(&answers[&2]), Code::InvalidArgument);
    assert_eq!(error_code(&answers[&3]), Code::InvalidArgument);
    assert_eq!(error_code(&answers[&4]), Code::ResourceExhausted);
    assert_eq!(error_code(&answers[&5]), Code::NotFound);
    assert_eq!(error_code(&answers[&6]), Code::NotFound);

    // The same session still serves, and answers carry their request's id.
    let answers = session
        .run(vec![
            (10, push("q", vec![Bytes::from_static(b"a")])),
            (11, push("q", vec![Bytes::from_static(b"b")])),
        ])
        .await;
    // The two ran concurrently: either may have been stored first.
    let id_of = |request| match &answers[&request] {
        Answer::Push(r) => r.first_id,
        other => panic!("{other:?}"),
    };
    let (a, b) = (id_of(10), id_of(11));
    let mut ids = [a, b];
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);
    let answers = session.run(vec![(12, take("q", 10))]).await;
    let Answer::Messages(taken) = &answers[&12] else {
        panic!("{answers:?}")
    };
    let taken = busmq_storage::wire::messages_from_wire(taken.clone()).unwrap();
    let taken: HashMap<u64, &[u8]> = taken.iter().map(|m| (m.id, &m.payload[..])).collect();
    assert_eq!(
        taken,
        HashMap::from([(a, b"a".as_slice()), (b, b"b".as_slice())])
    );
}

/// Sends raw bytes as session frames, to put what no client would on the
/// wire.
#[derive(Default)]
struct RawCodec;

struct RawEncoder;
struct AnswerDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = pb::SessionResponse;
    type Encoder = RawEncoder;
    type Decoder = AnswerDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> AnswerDecoder {
        AnswerDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for AnswerDecoder {
    type Item = pb::SessionResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        pb::SessionResponse::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// Opens a session that sends `frames` as they are, and returns how it
/// ended: its answers, then the status it ended with.
async fn raw_session(channel: Channel, frames: Vec<Bytes>) -> (Vec<pb::SessionResponse>, Status) {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/busmq.storage.v1.Storage/Session");
    // The request stream stays open: the server, not the end of input,
    // must end the session.
    let (tx, rx) = mpsc::channel(frames.len().max(1));
    for frame in frames {
        tx.send(frame).await.unwrap();
    }
    let mut answers = grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, RawCodec)
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    let status = loop {
        match tokio::time::timeout(GUARD, answers.message())
            .await
            .expect("the session ends, it does not hang")
        {
            Ok(Some(answer)) => got.push(answer),
            Ok(None) => panic!("ended without a status after {got:?}"),
            Err(status) => break status,
        }
    };
    drop(tx);
    (got, status)
}

fn encoded(id: u64, op: Option<Op>) -> Bytes {
    pb::SessionRequest {
        id,
        op,
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

/// Operations on another session of the same connection, and unary calls,
/// work: `name` identifies this check's queue.
async fn still_serving(channel: Channel, name: &str) {
    let mut client = StorageClient::new(channel.clone());
    client
        .attach(pb::AttachRequest {
            queue: name.into(),
            ttl: Some(busmq_proto::prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
        })
        .await
        .unwrap();
    let mut session = TypedSession::open(channel).await;
    let answers = session
        .run(vec![(1, push(name, vec![Bytes::from_static(b"ok")]))])
        .await;
    assert!(matches!(answers[&1], Answer::Push(_)), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_ends_its_session_with_a_clear_status_and_nothing_else() {
    let server = server(Limits::default()).await;
    let channel = channel(&server.url).await;
    // A session opened before, with an operation in it, outlives it.
    let mut other = TypedSession::open(channel.clone()).await;
    let frames = vec![
        encoded(1, push("missing", vec![Bytes::from_static(b"x")])),
        Bytes::from_static(&[0xff; 16]),
        encoded(2, push("missing", vec![Bytes::from_static(b"x")])),
    ];
    let (answers, status) = raw_session(channel.clone(), frames).await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("decode"), "{status:?}");
    // What came before the garbage was answered; nothing after it ran.
    assert!(answers.iter().all(|a| a.id == 1), "{answers:?}");
    let answers = other.run(vec![(5, take("missing", 1))]).await;
    assert_eq!(error_code(&answers[&5]), Code::NotFound);
    still_serving(channel, "after-garbage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_ends_its_session_with_out_of_range() {
    let limits = Limits {
        max_message_bytes: 1024,
        ..Limits::default()
    };
    let server = server(limits).await;
    let channel = channel(&server.url).await;
    let big = Bytes::from(vec![7u8; limits.max_request_bytes() + 1]);
    let (answers, status) =
        raw_session(channel.clone(), vec![encoded(1, push("q", vec![big]))]).await;
    assert!(answers.is_empty(), "{answers:?}");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    still_serving(channel, "after-oversized").await;
}

/// An answer the server could not send on the stream fails alone (as the
/// unary call would), and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_answer_fails_alone() {
    let limits = Limits {
        max_message_bytes: 64 << 10,
        ..Limits::default()
    };
    let server = server(limits).await;
    let remote = RemoteStorage::connect_lazy(&server.url).unwrap();
    let q = queue("big-answers");
    remote
        .attach(&q, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let message = Bytes::from(vec![1u8; 60 << 10]);
    // Each push fits a request; together they are over one answer's limit.
    for _ in 0..2 * limits.max_request_bytes() / (60 << 10) / 64 + 1 {
        remote.push(&q, vec![message.clone(); 64]).await.unwrap();
    }
    let err = remote
        .take(&q, 10_000, TakeMode::Remove)
        .await
        .expect_err("an answer over the limit");
    assert_eq!(err.code(), ErrorCode::ResourceExhausted, "{err}");
    assert!(err.to_string().contains("over the limit"), "{err}");
    let ids = remote
        .push(&q, vec![Bytes::from_static(b"small")])
        .await
        .unwrap();
    assert!(ids.first > 1);
}

/// A push over a session frame's size goes as a unary call: it succeeds
/// where the server allows it, and the session keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pushes_go_unary() {
    let server = server(Limits::default()).await;
    let remote = RemoteStorage::connect_lazy(&server.url).unwrap();
    let q = queue("large-push");
    remote
        .attach(&q, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let big = Bytes::from(vec![3u8; 1 << 20]);
    let count = busmq_storage::remote::MAX_SESSION_REQUEST / (1 << 20) + 1;
    let ids = remote.push(&q, vec![big; count]).await.unwrap();
    assert_eq!((ids.first, ids.last), (1, count as u64));
    let taken = remote.take(&q, 1, TakeMode::Remove).await.unwrap();
    assert_eq!(taken[0].payload.len(), 1 << 20);
    assert_eq!(remote.in_flight(), 0);
}
