//! The JSON bodies of the gateway's answers and requests, as serialized by
//! the handlers and described in the OpenAPI document.

use busmq_client::{Delivery, QueueInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::payload;

/// A message handed out: its id, its payload, and (lease mode) the attempt
/// of this delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    /// The message id: its position in its queue.
    pub id: u64,
    /// The payload as pushed over HTTP (any JSON value); a message pushed
    /// by another client whose bytes are not JSON text is a string.
    pub payload: Value,
    /// Lease mode: this delivery's number, from 1 (`?attempt=` of its ack
    /// or nack). 0 in the other modes.
    pub attempt: u32,
}

impl From<&Delivery> for Message {
    fn from(delivery: &Delivery) -> Self {
        Message {
            id: delivery.id,
            payload: payload::to_response(&delivery.payload),
            attempt: delivery.attempt,
        }
    }
}

/// The messages one consume request took, oldest first; empty when there
/// was none to take within the wait.
#[derive(Debug, Serialize, ToSchema)]
pub struct Messages {
    /// The messages, in id order.
    pub messages: Vec<Message>,
}

/// A push to a queue: one message (`payload`) or a batch (`messages`),
/// not both.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // The handlers read the body as JSON text; this describes it.
pub enum PushRequest {
    /// One message.
    One(PublishRequest),
    /// A batch.
    Batch(BatchRequest),
}

/// A batch of messages.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // The handlers read the body as JSON text; this describes it.
pub struct BatchRequest {
    /// One message per element (any JSON values), at least one.
    #[schema(min_items = 1)]
    pub messages: Vec<Value>,
}

/// A publication: one message.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // The handler reads the body as JSON text; this describes it.
pub struct PublishRequest {
    /// The message: any JSON value.
    pub payload: Value,
}

/// A form push: `payload=...` (a string).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // Read as a form by `payload`; this describes it.
pub struct FormPayload {
    /// The message, a string.
    pub payload: String,
}

/// The ids a push gave: consecutive, in the order the messages were sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pushed {
    /// Every id, in order (`first_id` to `first_id + count - 1`).
    pub ids: Vec<u64>,
    /// The id of the first message.
    pub first_id: u64,
    /// How many messages were pushed.
    pub count: u64,
}

/// A message pushed on a message-queue route.
#[derive(Debug, Serialize, ToSchema)]
pub struct Id {
    /// The message id.
    pub id: u64,
}

/// A lease or reliable ack.
#[derive(Debug, Serialize, ToSchema)]
pub struct Acked {
    /// The message acked.
    pub id: u64,
    /// Messages this removed: 1 for a lease; in reliable mode every
    /// un-acked message up to `id` (0 when they were acked already).
    pub removed: u64,
}

/// A nack: the lease is given back at once.
#[derive(Debug, Serialize, ToSchema)]
pub struct Nacked {
    /// The message given back.
    pub id: u64,
    /// True when that was its last delivery (the queue's
    /// `max_deliveries`): it moved to the dead-letter queue `<name>.dlq`.
    pub dead_lettered: bool,
}

/// Everything the broker knows about a queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueStats {
    /// The queue's name.
    pub name: String,
    /// Messages stored: waiting plus delivered-but-not-acked.
    pub count: u64,
    /// Messages delivered in reliable mode and not acked yet.
    pub pending: u64,
    /// Messages leased to lease-mode consumers and not settled yet.
    pub leased: u64,
    /// Current attachments, from every client (this gateway holds one).
    pub attachments: u64,
    /// Messages pushed since the queue was created.
    pub pushed: u64,
    /// Messages taken since the queue was created (persistent reads are not
    /// counted).
    pub consumed: u64,
    /// The id the next pushed message will get.
    pub next_id: u64,
    /// Seconds the queue lives with no attachments.
    pub ttl: f64,
    /// Deliveries after which a message moves to the dead-letter queue; 0
    /// is unlimited.
    pub max_deliveries: u32,
    /// True while a reliable consumer holds the queue.
    pub reliable_consumer: bool,
}

impl QueueStats {
    /// The stats of queue `name` from its info.
    pub fn new(name: &str, info: &QueueInfo) -> Self {
        QueueStats {
            name: name.to_owned(),
            count: info.count,
            pending: info.pending,
            leased: info.leased,
            attachments: info.attachments,
            pushed: info.pushed,
            consumed: info.consumed,
            next_id: info.next_id,
            ttl: info.ttl.as_secs_f64(),
            max_deliveries: info.max_deliveries,
            reliable_consumer: info.reliable_consumer,
        }
    }
}

/// What a flush removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Flushed {
    /// Messages removed; the queue and its id counter stay.
    pub flushed: u64,
}

/// What a delete did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    /// False when there was no such queue.
    pub deleted: bool,
}

/// A publication.
#[derive(Debug, Serialize, ToSchema)]
pub struct Published {
    /// Subscribers it reached, over every broker of the bus.
    pub receivers: u64,
}

/// The fields of a persistable object: a JSON object whose names are 1 to
/// 200 bytes (the broker's rule) and whose values are any JSON.
#[derive(Debug)]
pub struct Fields;

impl utoipa::PartialSchema for Fields {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
        let name = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(200));
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("Field names (1 to 200 bytes) to any JSON values"))
            .property_names(Some(name))
            .additional_properties(Some(
                AdditionalProperties::<utoipa::openapi::schema::Schema>::FreeForm(true),
            ))
            .into()
    }
}

impl ToSchema for Fields {}

/// The status of the process or of its broker.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    pub status: String,
}

/// A queue name, in the path. The broker judges it: 1 to 200 bytes of
/// `[A-Za-z0-9._:-]` by default.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Read by the handlers from the path; this describes it.
pub struct QueuePath {
    /// The queue.
    #[param(pattern = r"^[A-Za-z0-9._:-]{1,200}$", example = "orders")]
    pub name: String,
}

/// A message id, in the path: a positive integer.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Read by the handlers from the path; this describes it.
pub struct IdPath {
    /// The message id.
    #[param(minimum = 1, example = 1)]
    pub id: u64,
}

/// A pub/sub channel name, in the path (the broker's name rules).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Read by the handlers from the path; this describes it.
pub struct ChannelPath {
    /// The channel.
    #[param(pattern = r"^[A-Za-z0-9._:-]{1,200}$", example = "news")]
    pub channel: String,
}

/// A persistable object's name, in the path (the broker's name rules).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Read by the handlers from the path; this describes it.
pub struct ObjectPath {
    /// The object.
    #[param(pattern = r"^[A-Za-z0-9._:-]{1,200}$", example = "user.1")]
    pub name: String,
}

/// How `GET /v1/queues/{name}/messages` consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModeName {
    /// Competing consumers: each message leased for `visibility`, acked or
    /// nacked by id (and attempt); an expired lease returns it to the front.
    Lease,
    /// At least once: messages stay pending until acked (cumulatively, by
    /// id); the next reliable consumer gets un-acked ones again. One
    /// reliable consumer per queue at a time.
    Reliable,
    /// At most once: removed as taken.
    Unreliable,
    /// Reads from `from` on, removing nothing.
    Persistent,
}

/// The query of a consume.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by the handlers from the query; this describes it.
pub struct ConsumeQuery {
    /// The consume mode (default `lease`).
    #[param(inline)]
    pub mode: Option<ModeName>,
    /// The most messages to answer with (default 1).
    #[param(minimum = 1, maximum = 1000)]
    pub max: Option<u64>,
    /// Seconds to wait for a first message (a long poll; default 0, at
    /// most 20 is used).
    #[param(minimum = 0, maximum = 20)]
    pub wait: Option<f64>,
    /// `lease`: seconds each message stays leased (default
    /// `--visibility-timeout`). Like `from` and `last`, checked in every
    /// mode and used only in its own.
    #[param(exclusive_minimum = 0, maximum = 43200)]
    pub visibility: Option<f64>,
    /// `persistent`: the first id to read (default 0: the oldest stored).
    #[param(minimum = 0)]
    pub from: Option<u64>,
    /// `reliable`: the id of the last message already handled; messages up
    /// to it are discarded first, as if acked.
    #[param(minimum = 0)]
    pub last: Option<u64>,
}

/// Which ack: a lease's (by attempt, or the one this gateway handed out) or
/// a reliable consumer's (cumulative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// The lease of this message.
    Lease,
    /// This message and every lower id, pending in reliable mode.
    Reliable,
}

/// The query of an ack.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by the handlers from the query; this describes it.
pub struct AckQuery {
    /// `lease` (default) or `reliable`.
    #[param(inline)]
    pub mode: Option<AckMode>,
    /// `lease`: the delivery's attempt, as handed out. Without it, the
    /// lease this gateway handed out (see docs/http.md, the lease book).
    #[param(minimum = 1)]
    pub attempt: Option<u32>,
}

/// The query of a nack.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by the handlers from the query; this describes it.
pub struct NackQuery {
    /// The delivery's attempt, as handed out. Without it, the lease this
    /// gateway handed out.
    #[param(minimum = 1)]
    pub attempt: Option<u32>,
}

/// The query of a persistable write.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by the handlers from the query; this describes it.
pub struct ObjectQuery {
    /// Seconds the object lives after this write (whole seconds, rounded
    /// up: at least 1), at most the broker's ceiling of ten years; without
    /// it, it never expires.
    #[param(exclusive_minimum = 0, maximum = 315_360_000)]
    pub ttl: Option<f64>,
}
