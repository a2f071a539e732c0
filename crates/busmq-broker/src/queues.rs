//! The `busmq.v1.Queues` gRPC service: validates each request, calls the
//! store, maps the answer. Consumption runs in the `consume` module.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use busmq_core::{Error, ErrorCode, QueueName};
use busmq_proto::v1::{self, queues_server::Queues};
use busmq_proto::{duration, prost_types, to_status};
use busmq_storage::listing::list_queues_checked;
use busmq_storage::{LeaseToken, ReliableLock, Settled, Settlement, Storage};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::config::{
    ACK_CONCURRENCY, BrokerConfig, DEFAULT_LEASE_PREFETCH, DEFAULT_MANY_PREFETCH,
    DEFAULT_VISIBILITY, MAX_ACK_LEASES, MAX_ACK_MANY, MAX_MANY_PREFETCH, MAX_MANY_QUEUES,
    MAX_PREFETCH, MAX_TTL_SECS,
};
use crate::consume::{ConsumeManyTask, ConsumeTask, Mode, QueueReader, STREAM_BUFFER};
use crate::push_stream;
use crate::wakeup::Wakeups;

/// Existence checks of a ConsumeMany request in flight at once.
const EXISTENCE_CHECKS: usize = 64;

/// The queue service of one broker.
pub struct QueuesService {
    storage: Arc<dyn Storage>,
    wakeups: Arc<Wakeups>,
    config: BrokerConfig,
    shutdown: CancellationToken,
}

impl QueuesService {
    /// A service over `storage`. `wakeups` must be fed by the store's
    /// notification stream (see [`Wakeups::run`]).
    pub fn new(
        storage: Arc<dyn Storage>,
        wakeups: Arc<Wakeups>,
        config: BrokerConfig,
        shutdown: CancellationToken,
    ) -> Self {
        QueuesService {
            storage,
            wakeups,
            config,
            shutdown,
        }
    }

    fn name(&self, queue: &str) -> Result<QueueName, Status> {
        QueueName::parse(queue, &self.config.limits).map_err(to_status)
    }

    /// The reader a Consume request asks for, or why it makes no sense.
    fn reader(&self, req: &v1::ConsumeRequest) -> Result<QueueReader, Status> {
        let queue = self.name(&req.queue)?;
        let (mode, prefetch) = consumer_settings(req, &self.config)?;
        if req.max == Some(0) {
            return Err(invalid(
                "max must be at least 1 (leave it unset for no limit)",
            ));
        }
        Ok(QueueReader {
            storage: Arc::clone(&self.storage),
            queue,
            mode,
            remaining: req.max,
            prefetch,
            consumer: None,
        })
    }

    /// Settles one lease-mode delivery named by `token`.
    async fn settle(
        &self,
        queue: &str,
        token: Option<v1::LeaseToken>,
        settlement: Settlement,
    ) -> Result<Settled, Status> {
        let queue = self.name(queue)?;
        let Some(token) = token else {
            return Err(invalid(
                "a lease token (message id and attempt) is required",
            ));
        };
        let token = LeaseToken {
            id: token.id,
            attempt: token.attempt,
        };
        store(self.storage.settle(&queue, token, settlement).await)
    }
}

/// The consumer a Consume request asks for: its mode and prefetch, or why
/// the request makes no sense. Channels consume through this too.
pub(crate) fn consumer_settings(
    req: &v1::ConsumeRequest,
    config: &BrokerConfig,
) -> Result<(Mode, u32), Status> {
    let mode = v1::ConsumeMode::try_from(req.mode)
        .map_err(|_| invalid(format!("unknown consume mode {}", req.mode)))?;
    if req.index.is_some() && mode != v1::ConsumeMode::Persistent {
        return Err(invalid("index applies only to persistent consumption"));
    }
    if req.last.is_some() && mode != v1::ConsumeMode::Reliable {
        return Err(invalid("last applies only to reliable consumption"));
    }
    if req.visibility_timeout.is_some() && mode != v1::ConsumeMode::Lease {
        return Err(invalid(
            "visibility_timeout applies only to lease consumption",
        ));
    }
    let mode = match mode {
        // Unset is the default mode.
        v1::ConsumeMode::Unspecified | v1::ConsumeMode::Unreliable => Mode::Unreliable,
        v1::ConsumeMode::Reliable => Mode::Reliable {
            lock: ReliableLock {
                owner: format!("consumer-{:032x}", rand::random::<u128>()),
                lease: config.reliable_lease,
            },
            last: req.last.unwrap_or(0),
        },
        v1::ConsumeMode::Persistent => Mode::Persistent {
            next: req.index.unwrap_or(0).max(1),
        },
        v1::ConsumeMode::Lease => {
            let visibility = match &req.visibility_timeout {
                None => DEFAULT_VISIBILITY,
                Some(d) => {
                    Duration::from_millis(store(duration::whole_millis("visibility_timeout", d))?)
                }
            };
            store(busmq_core::check_visibility(visibility))?;
            Mode::Lease {
                owner: format!("lease-{:032x}", rand::random::<u128>()),
                visibility,
                next_expiry: None,
            }
        }
    };
    let prefetch = match req.prefetch {
        None if matches!(mode, Mode::Lease { .. }) => DEFAULT_LEASE_PREFETCH,
        None => config.default_prefetch,
        Some(p) if (1..=MAX_PREFETCH).contains(&p) => p,
        Some(p) => {
            return Err(invalid(format!(
                "prefetch {p} is not in 1..={MAX_PREFETCH}"
            )));
        }
    };
    Ok((mode, prefetch))
}

/// NOT_FOUND unless `queue` exists.
async fn check_exists(storage: &dyn Storage, queue: &QueueName) -> Result<(), Status> {
    match store(storage.info(queue).await)? {
        Some(_) => Ok(()),
        None => Err(to_status(Error::QueueNotFound(queue.to_string()))),
    }
}

/// A ttl a client asks for (of a queue, a channel's queues, an object):
/// whole seconds, at least one, at most [`busmq_core::MAX_TTL`].
pub(crate) fn ttl(d: &prost_types::Duration) -> Result<Duration, Status> {
    match store(duration::whole_seconds("ttl", d))? {
        0 => Err(invalid("ttl must be at least 1 s")),
        t if t > MAX_TTL_SECS => Err(invalid(format!("ttl must be at most {MAX_TTL_SECS} s"))),
        t => Ok(Duration::from_secs(t)),
    }
}

/// The ttl an attach asks for: `None` keeps the queue's (or the default).
pub(crate) fn attach_ttl(
    ttl_field: Option<&prost_types::Duration>,
) -> Result<Option<Duration>, Status> {
    ttl_field.map(ttl).transpose()
}

pub(crate) fn invalid(msg: impl Into<String>) -> Status {
    to_status(Error::InvalidArgument(msg.into()))
}

fn store<T>(r: Result<T, Error>) -> Result<T, Status> {
    r.map_err(to_status)
}

#[tonic::async_trait]
impl Queues for QueuesService {
    async fn attach(
        &self,
        request: Request<v1::AttachRequest>,
    ) -> Result<Response<v1::AttachResponse>, Status> {
        let req = request.into_inner();
        busmq_server::telemetry::record_queue(&req.queue);
        let queue = self.name(&req.queue)?;
        let ttl = attach_ttl(req.ttl.as_ref())?;
        if let Some(max) = req.max_deliveries {
            store(busmq_core::check_max_deliveries(max))?;
            // Its dead letters must land in a queue users can name.
            let dlq = queue.dead_letters();
            if max > 0 && QueueName::parse(dlq.as_str(), &self.config.limits).is_err() {
                return Err(invalid(format!(
                    "max_deliveries needs the dead-letter queue \"{dlq}\", which is not a \
                     valid queue name (names are at most {} characters)",
                    self.config.limits.max_name_len
                )));
            }
        }
        let attached = store(self.storage.attach(&queue, ttl).await)?;
        // Sampled from now on, before its first push or consumer.
        busmq_server::metrics::queue(&queue);
        if let Some(max) = req.max_deliveries {
            store(self.storage.set_max_deliveries(&queue, max).await)?;
        }
        tracing::debug!(%queue, existed = attached.existed, "attached");
        Ok(Response::new(v1::AttachResponse {
            existed: attached.existed,
            attachments: attached.attachments,
        }))
    }

    async fn detach(
        &self,
        request: Request<v1::DetachRequest>,
    ) -> Result<Response<v1::DetachResponse>, Status> {
        let queue = self.name(&request.into_inner().queue)?;
        busmq_server::telemetry::record_queue(queue.as_str());
        let attachments = store(self.storage.detach(&queue).await)?;
        Ok(Response::new(v1::DetachResponse { attachments }))
    }

    async fn push(
        &self,
        request: Request<v1::PushRequest>,
    ) -> Result<Response<v1::PushResponse>, Status> {
        let req = request.into_inner();
        busmq_server::telemetry::record_queue(&req.queue);
        busmq_server::telemetry::record_batch(req.messages.len());
        let queue = self.name(&req.queue)?;
        store(self.config.limits.check_batch(&req.messages))?;
        let pushed = req.messages.len() as u64;
        let started = busmq_server::metrics::start_timer();
        let ids = store(self.storage.push(&queue, req.messages).await)?;
        busmq_server::metrics::observe_since(&crate::metrics::PUSH_DURATION, started);
        if busmq_server::metrics::enabled() {
            busmq_server::metrics::queue(&queue)
                .pushed()
                .increment(pushed);
        }
        Ok(Response::new(v1::PushResponse {
            first_id: ids.first,
            last_id: ids.last,
        }))
    }

    type PushStreamStream = ReceiverStream<Result<v1::PushAck, Status>>;

    async fn push_stream(
        &self,
        request: Request<Streaming<v1::PushStreamRequest>>,
    ) -> Result<Response<Self::PushStreamStream>, Status> {
        let (tx, rx) = mpsc::channel(push_stream::ACK_BUFFER);
        tokio::spawn(
            push_stream::run(
                Arc::clone(&self.storage),
                self.config.limits,
                request.into_inner(),
                tx,
            )
            // Its batches' spans link to this call's.
            .instrument(tracing::Span::current()),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ConsumeStream = ReceiverStream<Result<v1::ConsumeEvent, Status>>;

    async fn consume(
        &self,
        request: Request<v1::ConsumeRequest>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let reader = self.reader(&request.into_inner())?;
        busmq_server::telemetry::record_queue(reader.queue.as_str());
        // Subscribe before the existence check so nothing after it is missed.
        let signal = self.wakeups.subscribe(&reader.queue);
        check_exists(&*self.storage, &reader.queue).await?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let task = ConsumeTask {
            reader,
            signal,
            shutdown: self.shutdown.clone(),
            tx,
        };
        // Its fetches' spans link to this call's.
        tokio::spawn(task.run().instrument(tracing::Span::current()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ConsumeManyStream = ReceiverStream<Result<v1::ConsumeManyEvent, Status>>;

    async fn consume_many(
        &self,
        request: Request<v1::ConsumeManyRequest>,
    ) -> Result<Response<Self::ConsumeManyStream>, Status> {
        let req = request.into_inner();
        if req.queues.is_empty() || req.queues.len() > MAX_MANY_QUEUES {
            return Err(invalid(format!(
                "name 1..={MAX_MANY_QUEUES} queues (got {})",
                req.queues.len()
            )));
        }
        let prefetch = match req.prefetch {
            None => DEFAULT_MANY_PREFETCH,
            Some(p) if (1..=MAX_MANY_PREFETCH).contains(&p) => p,
            Some(p) => {
                return Err(invalid(format!(
                    "prefetch {p} is not in 1..={MAX_MANY_PREFETCH}"
                )));
            }
        };
        let mut readers = Vec::with_capacity(req.queues.len());
        let mut named = std::collections::HashSet::with_capacity(req.queues.len());
        for queue in &req.queues {
            let reader = self.reader(queue)?;
            if !named.insert(reader.queue.clone()) {
                return Err(invalid(format!("queue {} is named twice", reader.queue)));
            }
            readers.push(reader);
        }
        let queues: Vec<QueueName> = readers.iter().map(|r| r.queue.clone()).collect();
        // Subscribe before the existence checks so nothing after them is missed.
        let interest = self.wakeups.subscribe_many(queues.clone());
        let mut checks = futures::stream::iter(queues.into_iter().map(|queue| {
            let storage = Arc::clone(&self.storage);
            async move { check_exists(&*storage, &queue).await }
        }))
        .buffered(EXISTENCE_CHECKS);
        while let Some(checked) = checks.next().await {
            checked?;
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let task = ConsumeManyTask {
            readers,
            prefetch,
            interest,
            shutdown: self.shutdown.clone(),
            tx,
        };
        tokio::spawn(task.run());
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn ack(
        &self,
        request: Request<v1::AckRequest>,
    ) -> Result<Response<v1::AckResponse>, Status> {
        let req = request.into_inner();
        busmq_server::telemetry::record_queue(&req.queue);
        match req.target {
            Some(v1::ack_request::Target::Lease(token)) => {
                self.settle(&req.queue, Some(token), Settlement::Ack)
                    .await?;
                Ok(Response::new(v1::AckResponse { removed: 1 }))
            }
            Some(v1::ack_request::Target::Id(id)) => {
                let queue = self.name(&req.queue)?;
                let removed = store(self.storage.ack(&queue, id).await)?;
                Ok(Response::new(v1::AckResponse { removed }))
            }
            None => Err(invalid(
                "an ack names either an id (reliable mode) or a lease (lease mode)",
            )),
        }
    }

    async fn ack_leases(
        &self,
        request: Request<v1::AckLeasesRequest>,
    ) -> Result<Response<v1::AckLeasesResponse>, Status> {
        let req = request.into_inner();
        busmq_server::telemetry::record_queue(&req.queue);
        busmq_server::telemetry::record_batch(req.leases.len());
        let queue = self.name(&req.queue)?;
        if req.leases.len() > MAX_ACK_LEASES {
            return Err(invalid(format!(
                "{} lease tokens in one call is over the limit of {MAX_ACK_LEASES}",
                req.leases.len()
            )));
        }
        // Refused before anything is settled, so a refusal changes nothing.
        if let Some(bad) = req.leases.iter().find(|t| t.id == 0 || t.attempt == 0) {
            return Err(invalid(format!(
                "lease token (id {}, attempt {}): ids and attempts start at 1",
                bad.id, bad.attempt
            )));
        }
        // Tokens of one message are settled one after the other, oldest
        // attempt first, so the answer does not depend on timing: an older
        // attempt is reported lapsed, not "not held" because a newer one
        // of the same call got there first and removed the message.
        // Different messages settle concurrently.
        let tokens: BTreeSet<(u64, u32)> = req.leases.iter().map(|t| (t.id, t.attempt)).collect();
        let mut by_message: Vec<Vec<LeaseToken>> = Vec::new();
        for (id, attempt) in tokens {
            let token = LeaseToken { id, attempt };
            match by_message.last_mut() {
                Some(same) if same[0].id == id => same.push(token),
                _ => by_message.push(vec![token]),
            }
        }
        let storage = &self.storage;
        let queue = &queue;
        let mut settled = futures::stream::iter(by_message)
            .map(|tokens| async move {
                let mut outcomes = Vec::with_capacity(tokens.len());
                for token in tokens {
                    outcomes.push((token, storage.settle(queue, token, Settlement::Ack).await));
                }
                futures::stream::iter(outcomes)
            })
            .buffer_unordered(ACK_CONCURRENCY)
            .flatten();
        let mut response = v1::AckLeasesResponse::default();
        while let Some((token, outcome)) = settled.next().await {
            let token = v1::LeaseToken {
                id: token.id,
                attempt: token.attempt,
            };
            match outcome {
                Ok(_) => response.acked += 1,
                Err(e) => match e.code() {
                    ErrorCode::FailedPrecondition => response.lapsed.push(token),
                    ErrorCode::NotFound => response.unknown.push(token),
                    _ => return Err(to_status(e)),
                },
            }
        }
        // NOT_FOUND is also what every token of a queue that does not
        // exist gets: tell that apart once, off the common path.
        if !response.unknown.is_empty() && store(storage.info(queue).await)?.is_none() {
            return Err(to_status(Error::QueueNotFound(queue.to_string())));
        }
        response.lapsed.sort_by_key(|t| (t.id, t.attempt));
        response.unknown.sort_by_key(|t| (t.id, t.attempt));
        Ok(Response::new(response))
    }

    async fn ack_many(
        &self,
        request: Request<v1::AckManyRequest>,
    ) -> Result<Response<v1::AckManyResponse>, Status> {
        let req = request.into_inner();
        busmq_server::telemetry::record_batch(req.acks.len());
        if req.acks.len() > MAX_ACK_MANY {
            return Err(invalid(format!(
                "{} acks in one call is over the limit of {MAX_ACK_MANY}",
                req.acks.len()
            )));
        }
        // Checked whole before anything is acked, so a refusal changes
        // nothing.
        let mut seen = HashSet::with_capacity(req.acks.len());
        let mut acks = Vec::with_capacity(req.acks.len());
        for ack in &req.acks {
            let queue = self.name(&ack.queue)?;
            if ack.id == 0 {
                return Err(invalid(format!(
                    "ack of queue {queue}: message ids start at 1"
                )));
            }
            if !seen.insert(queue.clone()) {
                return Err(invalid(format!("queue {queue} is acked twice in one call")));
            }
            acks.push((queue, ack.id));
        }
        let storage = &self.storage;
        let outcomes = futures::stream::iter(acks)
            .map(|(queue, id)| async move {
                let outcome = match storage.ack(&queue, id).await {
                    Ok(removed) => v1::ack_outcome::Outcome::Removed(removed),
                    Err(e) => v1::ack_outcome::Outcome::Failed(busmq_proto::to_proto_error(&e)),
                };
                v1::AckOutcome {
                    outcome: Some(outcome),
                }
            })
            .buffered(ACK_CONCURRENCY)
            .collect()
            .await;
        Ok(Response::new(v1::AckManyResponse { outcomes }))
    }

    async fn nack(
        &self,
        request: Request<v1::NackRequest>,
    ) -> Result<Response<v1::NackResponse>, Status> {
        let req = request.into_inner();
        busmq_server::telemetry::record_queue(&req.queue);
        let settled = self.settle(&req.queue, req.lease, Settlement::Nack).await?;
        Ok(Response::new(v1::NackResponse {
            dead_lettered: settled == Settled::DeadLettered,
        }))
    }

    async fn close(
        &self,
        request: Request<v1::CloseRequest>,
    ) -> Result<Response<v1::CloseResponse>, Status> {
        let queue = self.name(&request.into_inner().queue)?;
        busmq_server::telemetry::record_queue(queue.as_str());
        let existed = store(self.storage.close(&queue).await)?;
        Ok(Response::new(v1::CloseResponse { existed }))
    }

    async fn flush(
        &self,
        request: Request<v1::FlushRequest>,
    ) -> Result<Response<v1::FlushResponse>, Status> {
        let queue = self.name(&request.into_inner().queue)?;
        busmq_server::telemetry::record_queue(queue.as_str());
        let removed = store(self.storage.flush(&queue).await)?;
        Ok(Response::new(v1::FlushResponse { removed }))
    }

    async fn info(
        &self,
        request: Request<v1::InfoRequest>,
    ) -> Result<Response<v1::QueueInfo>, Status> {
        let queue = self.name(&request.into_inner().queue)?;
        busmq_server::telemetry::record_queue(queue.as_str());
        match store(self.storage.info(&queue).await)? {
            Some(info) => Ok(Response::new(info.into())),
            None => Err(to_status(Error::QueueNotFound(queue.to_string()))),
        }
    }

    async fn list(
        &self,
        request: Request<v1::ListQueuesRequest>,
    ) -> Result<Response<v1::ListQueuesResponse>, Status> {
        let listed = list_queues_checked(&*self.storage, &self.config.limits, request.get_ref());
        store(listed.await).map(Response::new)
    }

    async fn get_metadata(
        &self,
        request: Request<v1::GetMetadataRequest>,
    ) -> Result<Response<v1::GetMetadataResponse>, Status> {
        let req = request.into_inner();
        busmq_server::telemetry::record_queue(&req.queue);
        let queue = self.name(&req.queue)?;
        let value = store(self.storage.get_metadata(&queue, &req.key).await)?;
        Ok(Response::new(v1::GetMetadataResponse { value }))
    }

    async fn set_metadata(
        &self,
        request: Request<v1::SetMetadataRequest>,
    ) -> Result<Response<v1::SetMetadataResponse>, Status> {
        let req = request.into_inner();
        busmq_server::telemetry::record_queue(&req.queue);
        let queue = self.name(&req.queue)?;
        if req.key.is_empty() {
            return Err(invalid("metadata key must not be empty"));
        }
        let limit = self.config.limits.max_message_bytes;
        if req.key.len() + req.value.len() > limit {
            return Err(to_status(Error::MessageTooLarge {
                size: req.key.len() + req.value.len(),
                limit,
            }));
        }
        store(
            self.storage
                .set_metadata(&queue, &req.key, &req.value)
                .await,
        )?;
        Ok(Response::new(v1::SetMetadataResponse {}))
    }
}
