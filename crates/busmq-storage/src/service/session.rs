//! The server side of `Session`: many hot operations multiplexed on one
//! long-lived bidirectional stream.
//!
//! Each request runs in a task of its own and is answered as it completes,
//! so a slow operation (a group commit) never holds up the others. At most
//! [`SESSION_WINDOW`] run at once; past that the session stops reading and
//! HTTP/2 flow control holds the client back.

use std::sync::Arc;

use busmq_proto::storage::v1 as pb;
use pb::session_request::Op;
use pb::session_response::Result as Answer;
use prost::Message as _;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::StorageService;

/// Requests of one session the server runs at once.
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
    let window = Arc::new(Semaphore::new(SESSION_WINDOW));
    let shutdown = service.shutdown.clone();
    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tx.closed() => return,
            permit = Arc::clone(&window).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tx.closed() => return,
            next = requests.message() => next,
        };
        let request = match next {
            Ok(Some(request)) => request,
            // The client is done sending: the stream ends once the tasks
            // still running have answered (each holds a sender).
            Ok(None) => return,
            // Undecodable or oversized: the stream is out of step and
            // cannot go on, but the client learns why.
            Err(status) => {
                tracing::debug!(%status, "storage session: bad frame, ending the session");
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let service = service.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let answer = run(&service, request).await;
            let _ = tx.send(Ok(answer)).await;
            drop(permit);
        });
    }
    // Shutting down: answer what was read, then tell the client to go.
    let _ = window.acquire_many(SESSION_WINDOW as u32).await;
    let _ = tx
        .send(Err(Status::unavailable("storage is shutting down")))
        .await;
}

/// Runs one request and words its answer; never fails the session.
async fn run(service: &StorageService, request: pb::SessionRequest) -> pb::SessionResponse {
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
    let mut answer = pb::SessionResponse {
        id,
        result: Some(result.unwrap_or_else(|status| error(&status))),
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
    Answer::Error(super::session_error(status))
}
