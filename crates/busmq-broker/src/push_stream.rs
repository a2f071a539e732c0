//! One task per PushStream call: stores its batches, one at a time per
//! queue and concurrently across queues.
//!
//! A batch is answered once stored, and the embedded store makes a push
//! durable before it answers; storing a stream's batches strictly one after
//! the other would make a producer of many queues on one stream wait a
//! disk commit per batch. Batches of one queue still go one at a time, in
//! stream order, so they keep their order and get increasing ids.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use busmq_core::{Error, Limits, QueueName};
use busmq_proto::{to_status, v1};
use busmq_storage::Storage;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

/// Push batches a PushStream may have answered but not yet sent.
pub const ACK_BUFFER: usize = 64;

/// Batches of one stream being stored at once, at most; beyond it the
/// stream is not read, so the client's own flow control holds it back.
const CONCURRENT_PUSHES: usize = 256;

/// The answers of one PushStream.
pub type AckSender = mpsc::Sender<Result<v1::PushAck, Status>>;

/// One validated batch.
struct Batch {
    sequence: u64,
    queue: QueueName,
    messages: Vec<bytes::Bytes>,
}

/// Reads `incoming` and stores its batches until it ends or one fails; the
/// first failure is the stream's last answer.
pub async fn run(
    storage: Arc<dyn Storage>,
    limits: Limits,
    mut incoming: Streaming<v1::PushStreamRequest>,
    tx: AckSender,
) {
    // Per queue with a batch being stored: the batches waiting behind it.
    let mut waiting: HashMap<QueueName, VecDeque<Batch>> = HashMap::new();
    let mut storing = FuturesUnordered::new();
    let store = |batch: Batch| {
        let storage = Arc::clone(&storage);
        // A span per batch, linked to the stream's rather than inside it:
        // a stream lives as long as its producer, and one trace of all its
        // batches would never end.
        let root = busmq_server::telemetry::RootSpan::new(|| {
            let span = tracing::debug_span!(
                parent: None,
                "push_stream.batch",
                otel.name = "busmq.v1.Queues/PushStream.Batch",
                messaging.destination.name = batch.queue.as_str(),
                messaging.batch.message_count = batch.messages.len(),
                busmq.sequence = batch.sequence,
            );
            span.follows_from(tracing::Span::current());
            span
        });
        let future = async move {
            let pushed = batch.messages.len() as u64;
            let started = busmq_server::metrics::start_timer();
            let stored = storage.push(&batch.queue, batch.messages).await;
            busmq_server::metrics::observe_since(&crate::metrics::PUSH_DURATION, started);
            if stored.is_ok() && busmq_server::metrics::enabled() {
                busmq_server::metrics::queue(&batch.queue)
                    .pushed()
                    .increment(pushed);
            }
            (batch.sequence, batch.queue, stored)
        };
        root.wrap(future).boxed()
    };
    let mut reading = true;
    loop {
        let next = tokio::select! {
            // Answers first: they free room for more.
            biased;
            Some((sequence, queue, stored)) = storing.next() => Step::Stored(sequence, queue, stored),
            next = incoming.next(), if reading && storing.len() < CONCURRENT_PUSHES => Step::Read(next),
            else => return,
        };
        match next {
            Step::Read(None) => reading = false,
            Step::Read(Some(Err(status))) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
            Step::Read(Some(Ok(req))) => {
                let batch = match validate(req, &limits) {
                    Ok(batch) => batch,
                    Err(e) => {
                        let _ = tx.send(Err(to_status(e))).await;
                        return;
                    }
                };
                match waiting.get_mut(&batch.queue) {
                    Some(behind) => behind.push_back(batch),
                    None => {
                        waiting.insert(batch.queue.clone(), VecDeque::new());
                        storing.push(store(batch));
                    }
                }
            }
            Step::Stored(sequence, queue, stored) => {
                let answer = stored.map_err(to_status).map(|ids| v1::PushAck {
                    sequence,
                    first_id: ids.first,
                    last_id: ids.last,
                });
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
                let behind = waiting.get_mut(&queue).and_then(VecDeque::pop_front);
                match behind {
                    Some(batch) => storing.push(store(batch)),
                    None => {
                        waiting.remove(&queue);
                    }
                }
            }
        }
    }
}

enum Step {
    Read(Option<Result<v1::PushStreamRequest, Status>>),
    Stored(u64, QueueName, Result<busmq_storage::IdRange, Error>),
}

fn validate(req: v1::PushStreamRequest, limits: &Limits) -> Result<Batch, Error> {
    let queue = QueueName::parse(&req.queue, limits)?;
    limits.check_batch(&req.messages)?;
    Ok(Batch {
        sequence: req.sequence,
        queue,
        messages: req.messages,
    })
}
