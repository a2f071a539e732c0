//! The client side of `Session`: the hot operations of every clone of a
//! [`RemoteStorage`](super::RemoteStorage) share one long-lived stream.
//!
//! A unary call costs an HTTP/2 stream with headers and trailers each way,
//! and a task on each side; on a session an operation is one frame each
//! way. A session that breaks fails every operation in flight on it with
//! UNAVAILABLE, exactly what those calls would have got over a dropped
//! connection, and the next operation opens a new one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use busmq_proto::storage::v1 as pb;
use busmq_proto::storage::v1::storage_client::StorageClient;
use pb::session_request::Op;
use pb::session_response::Result as Answer;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::{REQUEST_TIMEOUT, Transport, call_error, with_causes};
use crate::{Error, Result};

/// Operations one session may have in flight; more wait for room. The
/// server runs as many at once (`service::SESSION_WINDOW`).
pub const SESSION_WINDOW: usize = 1024;

/// Requests buffered toward the stream while HTTP/2 flow control holds it.
pub const SESSION_QUEUE: usize = 256;

/// Largest request sent on a session: every server accepts frames this
/// large (`Limits::max_request_bytes` is never below it); a larger one
/// goes as a unary call, so an oversized push fails alone.
pub const MAX_SESSION_REQUEST: usize = 4 << 20;

type Reply = oneshot::Sender<Result<Answer>>;

/// The operations in flight on one session, by request id.
#[derive(Default)]
struct InFlight {
    next_id: u64,
    waiting: HashMap<u64, Reply>,
    /// The stream ended: nothing more will be answered.
    ended: bool,
}

/// One open session.
struct Session {
    requests: mpsc::Sender<pb::SessionRequest>,
    in_flight: Arc<Mutex<InFlight>>,
    window: Semaphore,
}

fn lock(in_flight: &Mutex<InFlight>) -> MutexGuard<'_, InFlight> {
    in_flight.lock().unwrap_or_else(|p| p.into_inner())
}

impl Session {
    fn ended(&self) -> bool {
        lock(&self.in_flight).ended
    }
}

/// The session shared by the clones of one client, opened on first use
/// and again after it breaks.
pub(crate) struct Sessions {
    client: StorageClient<Transport>,
    url: String,
    current: Mutex<Option<Arc<Session>>>,
    /// One opener at a time: callers arriving meanwhile use its session,
    /// or share its failure rather than each waiting for a connect or
    /// request timeout of their own in turn.
    opening: tokio::sync::Mutex<()>,
    /// Failed attempts to open a session, and the last one's error.
    failures: AtomicU64,
    last_failure: Mutex<Option<Error>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("url", &self.url).finish()
    }
}

impl Sessions {
    pub(crate) fn new(client: StorageClient<Transport>, url: String) -> Self {
        Sessions {
            client,
            url,
            current: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            failures: AtomicU64::new(0),
            last_failure: Mutex::new(None),
        }
    }

    fn live(&self) -> Option<Arc<Session>> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.as_ref().filter(|s| !s.ended()).cloned()
    }

    /// Operations on the current session waiting for their answer.
    pub(crate) fn in_flight(&self) -> usize {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current
            .as_ref()
            .map_or(0, |s| lock(&s.in_flight).waiting.len())
    }

    async fn session(&self) -> Result<Arc<Session>> {
        if let Some(session) = self.live() {
            return Ok(session);
        }
        let failures = self.failures.load(Ordering::Acquire);
        let _opening = self.opening.lock().await;
        if let Some(session) = self.live() {
            return Ok(session);
        }
        if self.failures.load(Ordering::Acquire) != failures {
            let last = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = last.as_ref() {
                return Err(e.clone());
            }
        }
        let (requests, rx) = mpsc::channel(SESSION_QUEUE);
        // In a task of its own, outside the span of the operation that
        // happens to open it (a disabled span would not hide that one): the
        // session outlives that operation's trace by hours.
        let mut client = self.client.clone();
        let opened = tokio::spawn(async move { client.session(ReceiverStream::new(rx)).await })
            .await
            .unwrap_or_else(|e| Err(Status::internal(format!("opening the session: {e}"))));
        let answers = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => {
                let e = call_error(&self.url, status);
                *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                self.failures.fetch_add(1, Ordering::Release);
                return Err(e);
            }
        };
        let in_flight = Arc::new(Mutex::new(InFlight::default()));
        tokio::spawn(read_answers(
            answers,
            Arc::clone(&in_flight),
            self.url.clone(),
        ));
        let session = Arc::new(Session {
            requests,
            in_flight,
            window: Semaphore::new(SESSION_WINDOW),
        });
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&session));
        Ok(session)
    }

    /// Runs `op` on the session and returns its answer; an operation that
    /// failed in the store comes back as its error, with its code.
    pub(crate) async fn call(&self, op: Op) -> Result<Answer> {
        let session = self.session().await?;
        let _room = session
            .window
            .acquire()
            .await
            .map_err(|_| Error::Internal("storage session window closed".into()))?;
        let (reply, answer) = oneshot::channel();
        let id = {
            let mut in_flight = lock(&session.in_flight);
            if in_flight.ended {
                return Err(self.broke("the session ended"));
            }
            let id = in_flight.next_id;
            in_flight.next_id += 1;
            in_flight.waiting.insert(id, reply);
            id
        };
        // Per frame, because the stream is shared by every operation of the
        // broker: the storage parents its span for this one on it.
        let trace = busmq_server::telemetry::current_trace_parent().unwrap_or_default();
        let request = pb::SessionRequest {
            id,
            op: Some(op),
            traceparent: trace.traceparent,
            tracestate: trace.tracestate,
        };
        if session.requests.send(request).await.is_err() {
            lock(&session.in_flight).waiting.remove(&id);
            return Err(self.broke("the session ended"));
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.broke("the session ended")),
            Err(_) => {
                lock(&session.in_flight).waiting.remove(&id);
                Err(Error::Unavailable(format!(
                    "storage at {} did not answer within {} s",
                    self.url,
                    REQUEST_TIMEOUT.as_secs()
                )))
            }
        }
    }

    fn broke(&self, why: &str) -> Error {
        broke(&self.url, why)
    }
}

fn broke(url: &str, why: &str) -> Error {
    Error::Unavailable(format!("storage at {url} is unreachable: {why}"))
}

/// Hands each answer to its caller until the stream ends, then fails every
/// operation still waiting.
async fn read_answers(
    mut answers: Streaming<pb::SessionResponse>,
    in_flight: Arc<Mutex<InFlight>>,
    url: String,
) {
    let why = loop {
        match answers.message().await {
            Ok(Some(response)) => {
                let reply = lock(&in_flight).waiting.remove(&response.id);
                // None: its caller gave up (timeout) or went away.
                if let Some(reply) = reply {
                    let _ = reply.send(answer(response.result));
                }
            }
            Ok(None) => break "the storage ended the session".to_owned(),
            Err(status) => break session_broke(&status),
        }
    };
    tracing::debug!(%url, %why, "storage session ended");
    let waiting = {
        let mut in_flight = lock(&in_flight);
        in_flight.ended = true;
        std::mem::take(&mut in_flight.waiting)
    };
    for (_, reply) in waiting {
        let _ = reply.send(Err(broke(&url, &format!("session broke: {why}"))));
    }
}

/// Why a session's stream failed, with the transport's own words.
fn session_broke(status: &Status) -> String {
    format!("{:?}: {}", status.code(), with_causes(status))
}

fn answer(result: Option<Answer>) -> Result<Answer> {
    match result {
        Some(Answer::Error(e)) => Err(busmq_proto::from_proto_error(&e)),
        Some(answer) => Ok(answer),
        None => Err(Error::Internal(
            "storage sent a session answer this client does not know".into(),
        )),
    }
}

/// The error for an answer of the wrong kind (a server bug, never input).
pub(crate) fn mismatch(op: &str, answer: &Answer) -> Error {
    let kind = match answer {
        Answer::Push(_) => "push",
        Answer::Messages(_) => "messages",
        Answer::Ack(_) => "ack",
        Answer::Lease(_) => "lease",
        Answer::Settle(_) => "settle",
        Answer::TakeMany(_) => "take_many",
        Answer::Error(_) => "error",
    };
    Error::Internal(format!("storage answered a {op} with a {kind} result"))
}
