//! The server side of `Session`: many hot operations multiplexed on one
//! long-lived bidirectional stream.
//!
//! Requests run concurrently and are answered as they complete, so a slow
//! operation (a group commit) never holds up the others. They run inside
//! the session's own task rather than a task each: the operations one
//! commit releases all finish in one poll, and their answers go out
//! together, as one write, where a task per request woke the response
//! stream, and wrote to the socket, once per answer. At most
//! [`SESSION_WINDOW`] requests are running or waiting to be answered; past
//! that the session stops reading and HTTP/2 flow control holds the client
//! back.

use std::collections::VecDeque;

use busmq_proto::storage::v1 as pb;
use busmq_server::telemetry::RootSpan;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use pb::session_request::Op;
use pb::session_response::Result as Answer;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::StorageService;

/// Requests of one session the server runs, or holds answers for, at once.
pub const SESSION_WINDOW: usize = 1024;

/// Answers buffered for a client that reads them slower than they come.
pub const SESSION_BUFFER: usize = 256;

/// The stream type of `Session` responses.
pub type SessionStream = ReceiverStream<Result<pb::SessionResponse, Status>>;

/// Starts serving one session read from `requests`; its answers are the
/// returned stream.
pub(crate) fn start(
    service: StorageService,
    requests: Streaming<pb::SessionRequest>,
) -> SessionStream {
    let (tx, rx) = mpsc::channel(SESSION_BUFFER);
    tokio::spawn(serve(service, requests, tx));
    ReceiverStream::new(rx)
}

async fn serve(
    service: StorageService,
    mut requests: Streaming<pb::SessionRequest>,
    tx: mpsc::Sender<Result<pb::SessionResponse, Status>>,
) {
    let shutdown = service.shutdown.clone();
    let mut running = FuturesUnordered::new();
    let mut answers = VecDeque::new();
    let mut reading = true;
    // What ends the stream once everything read is answered: nothing when
    // the client is done sending.
    let mut ending = None;
    let client_gone = 'session: loop {
        if !reading && running.is_empty() && answers.is_empty() {
            break false;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if reading => {
                reading = false;
                ending = Some(Status::unavailable("storage is shutting down"));
            }
            _ = tx.closed() => break true,
            permit = tx.reserve(), if !answers.is_empty() => {
                let Ok(permit) = permit else { break true };
                permit.send(Ok(answers.pop_front().expect("not empty")));
                // The rest that fit, before the response stream runs.
                while let Some(answer) = answers.pop_front() {
                    match tx.try_send(Ok(answer)) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(Ok(answer))) => {
                            answers.push_front(answer);
                            break;
                        }
                        Err(_) => break 'session true,
                    }
                }
            }
            Some(answer) = running.next(), if !running.is_empty() => {
                answers.push_back(answer);
                while let Some(Some(answer)) = running.next().now_or_never() {
                    answers.push_back(answer);
                }
            }
            next = requests.message(), if reading && running.len() + answers.len() < SESSION_WINDOW => {
                match next {
                    Ok(Some(request)) => running.push(run(service.clone(), request)),
                    Ok(None) => reading = false,
                    // Undecodable or oversized: the stream is out of step
                    // and cannot go on, but the client learns why once what
                    // was read is answered.
                    Err(status) => {
                        tracing::debug!(%status, "storage session: bad frame, ending the session");
                        reading = false;
                        ending = Some(status);
                    }
                }
            }
        }
    };
    if client_gone {
        // What already runs finishes, unanswered: dropped midway, an
        // operation of several store steps could be left half done.
        if !running.is_empty() {
            tokio::spawn(async move { while running.next().await.is_some() {} });
        }
        return;
    }
    if let Some(status) = ending {
        let _ = tx.send(Err(status)).await;
    }
}

/// The span of one session operation. Its parent is the broker span the
/// frame names, never the session's: the session is one stream for every
/// operation of a broker, open for hours. A frame with no trace context
/// belongs to no kept trace (the broker samples before it sends), and gets
/// no span.
fn span(request: &pb::SessionRequest) -> RootSpan {
    let name = match &request.op {
        Some(Op::Push(_)) => "busmq.storage.v1.Storage/Session.Push",
        Some(Op::Take(_)) => "busmq.storage.v1.Storage/Session.Take",
        Some(Op::Read(_)) => "busmq.storage.v1.Storage/Session.Read",
        Some(Op::Ack(_)) => "busmq.storage.v1.Storage/Session.Ack",
        Some(Op::Lease(_)) => "busmq.storage.v1.Storage/Session.Lease",
        Some(Op::Settle(_)) => "busmq.storage.v1.Storage/Session.Settle",
        Some(Op::TakeMany(_)) => "busmq.storage.v1.Storage/Session.TakeMany",
        None => "busmq.storage.v1.Storage/Session.Unknown",
    };
    let make = || {
        tracing::debug_span!(
            parent: None,
            "storage.session",
            otel.name = name,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            busmq.session.request = request.id,
            messaging.destination.name = tracing::field::Empty,
            messaging.batch.message_count = tracing::field::Empty,
            busmq.error = tracing::field::Empty,
        )
    };
    RootSpan::continuing(make, &request.traceparent, &request.tracestate)
}

/// Runs one request and words its answer; never fails the session.
async fn run(service: StorageService, request: pb::SessionRequest) -> pb::SessionResponse {
    let root = span(&request);
    let timed = super::metrics::start(request.op.as_ref());
    let answer = root.wrap(run_op(service, request)).await;
    super::metrics::finish(timed);
    answer
}

async fn run_op(service: StorageService, request: pb::SessionRequest) -> pb::SessionResponse {
    let id = request.id;
    let result = match request.op {
        Some(Op::Push(r)) => service.push_op(r).await.map(Answer::Push),
        Some(Op::Take(r)) => service.take_op(r).await.map(Answer::Messages),
        Some(Op::Read(r)) => service.read_op(r).await.map(Answer::Messages),
        Some(Op::Ack(r)) => service.ack_op(r).await.map(Answer::Ack),
        Some(Op::Lease(r)) => service.lease_op(r).await.map(Answer::Lease),
        Some(Op::Settle(r)) => service.settle_op(r).await.map(Answer::Settle),
        Some(Op::TakeMany(r)) => service.take_many_op(r).await.map(Answer::TakeMany),
        // An operation added to the protocol after this server was built
        // decodes as none at all.
        None => Err(Status::invalid_argument(
            "session request with no operation this storage knows",
        )),
    };
    let result = result.unwrap_or_else(|status| {
        let span = tracing::Span::current();
        span.record("otel.status_code", "ERROR");
        span.record("busmq.error", status.message());
        error(&status)
    });
    let mut answer = pb::SessionResponse {
        id,
        result: Some(result),
    };
    // An answer the encoder would refuse would end the whole session; it
    // fails alone instead, as the unary call would.
    let (size, limit) = (answer.encoded_len(), service.limits.max_request_bytes());
    if size > limit {
        answer.result = Some(error(&Status::resource_exhausted(format!(
            "answer of {size} bytes is over the limit of {limit} bytes"
        ))));
    }
    answer
}

fn error(status: &Status) -> Answer {
    Answer::Error(busmq_proto::status_to_proto_error(status))
}
