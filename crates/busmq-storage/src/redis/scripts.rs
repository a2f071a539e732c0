//! The Lua scripts: every multi-step operation on a queue is one atomic
//! script call. Every script gets the eight keys of one queue (all in one
//! hash slot) and answers an array whose first element is a status:
//! [`OK`], [`MISSING`], [`UNKNOWN_ACK`], [`LOCKED`], [`LEASE_EXPIRED`],
//! [`UNKNOWN_LEASE`] or [`LEASES_ACTIVE`]. Scripts that may dead-letter
//! also get the eight keys of the queue's dead-letter queue, which shares
//! the queue's hash slot (see `placement` in the parent module), so a
//! message moves there in the same atomic step.
//!
//! Lease mode keys: `leases` (hash id -> packed attempt, owner and member),
//! `deadlines` (sorted set of leased ids by deadline in Redis server ms, so
//! every broker agrees on the clock) and `counts` (hash id -> deliveries of
//! a stored message that was delivered and put back).

use ::redis::Script;

/// The operation was done; the rest of the reply is its result.
pub const OK: i64 = 0;
/// The queue does not exist (on this shard).
pub const MISSING: i64 = 1;
/// An ack above every id ever delivered.
pub const UNKNOWN_ACK: i64 = 2;
/// Another owner holds the reliable lock.
pub const LOCKED: i64 = 3;
/// A settle names a delivery whose lease ran out or was redelivered.
pub const LEASE_EXPIRED: i64 = 4;
/// A settle names no delivery that happened.
pub const UNKNOWN_LEASE: i64 = 5;
/// A reliable consumer cannot start while leases are outstanding.
pub const LEASES_ACTIVE: i64 = 6;

/// The take script's mode argument for [`crate::TakeMode::Remove`].
pub const TAKE_REMOVE: &str = "r";
/// The take script's mode argument for [`crate::TakeMode::Pending`].
pub const TAKE_PENDING: &str = "p";

/// Shared by every script: key names, id decoding, the binary search over a
/// list sorted by id, and the ttl rules of an unattached queue.
const PRELUDE: &str = include_str!("lua/prelude.lua");

/// ARGV: ttl_ms or '', default ttl_ms. Reply: {OK, existed, attachments}.
const ATTACH: &str = include_str!("lua/attach.lua");

/// Reply: {OK, attachments, pttl}: pttl is the ms until the queue expires
/// (-2: already gone) when unattached, -1 while attached.
const DETACH: &str = include_str!("lua/detach.lua");

/// ARGV: channel, queue, payload... Reply: {OK, first, last}.
const PUSH: &str = include_str!("lua/push.lua");

/// ARGV: max, [`TAKE_REMOVE`] or [`TAKE_PENDING`]. Reply: {OK, {member...}}
/// or, for a pending take while leases are outstanding, {LEASES_ACTIVE}.
const TAKE: &str = include_str!("lua/take.lua");

/// ARGV: from, max. Reply: {OK, {member...}}.
const READ: &str = include_str!("lua/read.lua");

/// ARGV: id. Reply: {OK, removed} or {UNKNOWN_ACK}.
const ACK: &str = include_str!("lua/ack.lua");

/// ARGV: owner, lease_ms, last, channel, queue, dead-letter queue, its
/// default ttl_ms. Reply: {OK, requeued, dlq_pttl}, {LOCKED} or
/// {LEASES_ACTIVE}.
const BEGIN_RELIABLE: &str = include_str!("lua/begin_reliable.lua");

/// ARGV: owner, max, visibility_ms, channel, queue, dead-letter queue, its
/// default ttl_ms. Reply: {OK, {member, attempt, ...}, next_expiry_ms or
/// -1, dlq_pttl} or {LOCKED}.
const LEASE: &str = include_str!("lua/lease.lua");

/// ARGV: id, attempt, 'a' (ack) or 'n' (nack), channel, queue, dead-letter
/// queue, its default ttl_ms. Reply: {OK, settled (1 acked, 2 requeued,
/// 3 dead-lettered), dlq_pttl}, {LEASE_EXPIRED} or {UNKNOWN_LEASE}.
const SETTLE: &str = include_str!("lua/settle.lua");

/// ARGV: owner, channel, queue, dead-letter queue, its default ttl_ms.
/// Reply: {OK, released, dlq_pttl}.
const RELEASE_LEASES: &str = include_str!("lua/release_leases.lua");

/// ARGV: max. Reply: {OK}.
const SET_MAX_DELIVERIES: &str = include_str!("lua/set_max_deliveries.lua");

/// ARGV: owner, lease_ms. Reply: {OK, held}.
const RENEW_RELIABLE: &str = include_str!("lua/renew_reliable.lua");

/// ARGV: owner. Reply: {OK, released}.
const END_RELIABLE: &str = include_str!("lua/end_reliable.lua");

/// ARGV: channel, queue. Reply: {OK} or {MISSING}.
const CLOSE: &str = include_str!("lua/close.lua");

/// Reply: {OK, removed}.
const FLUSH: &str = include_str!("lua/flush.lua");

/// Reply: {OK, count, ttl_ms, attachments, pending, next_id, pushed,
/// consumed, locked, leased, max_deliveries}.
const INFO: &str = include_str!("lua/info.lua");

/// ARGV: key. Reply: {OK, 0} or {OK, 1, value}.
const GET_METADATA: &str = include_str!("lua/get_metadata.lua");

/// ARGV: key, value. Reply: {OK}.
const SET_METADATA: &str = include_str!("lua/set_metadata.lua");

/// Run by the process that started a queue's countdown, when it should be
/// over. ARGV: channel, queue. Reply: {OK, -2} when the queue is gone
/// (Expired published), {OK, -1} when attached again, else {OK, pttl} to
/// look again later.
const EXPIRE_CHECK: &str = include_str!("lua/expire_check.lua");

/// A persistable object's save, over one key (the object's hash), without
/// the queue prelude. ARGV: ttl_ms or '', then field, value pairs. Reply: 0.
const OBJECT_SAVE: &str = include_str!("lua/object_save.lua");

/// Every script, compiled once (each knows its SHA1 for EVALSHA and
/// reloads itself on NOSCRIPT).
pub struct Scripts {
    pub attach: Script,
    pub detach: Script,
    pub push: Script,
    pub take: Script,
    pub read: Script,
    pub ack: Script,
    pub begin_reliable: Script,
    pub renew_reliable: Script,
    pub end_reliable: Script,
    pub close: Script,
    pub flush: Script,
    pub info: Script,
    pub get_metadata: Script,
    pub set_metadata: Script,
    pub expire_check: Script,
    pub lease: Script,
    pub settle: Script,
    pub release_leases: Script,
    pub set_max_deliveries: Script,
    pub object_save: Script,
}

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            attach: script(ATTACH),
            detach: script(DETACH),
            push: script(PUSH),
            take: script(TAKE),
            read: script(READ),
            ack: script(ACK),
            begin_reliable: script(BEGIN_RELIABLE),
            renew_reliable: script(RENEW_RELIABLE),
            end_reliable: script(END_RELIABLE),
            close: script(CLOSE),
            flush: script(FLUSH),
            info: script(INFO),
            get_metadata: script(GET_METADATA),
            set_metadata: script(SET_METADATA),
            expire_check: script(EXPIRE_CHECK),
            lease: script(LEASE),
            settle: script(SETTLE),
            release_leases: script(RELEASE_LEASES),
            set_max_deliveries: script(SET_MAX_DELIVERIES),
            object_save: Script::new(OBJECT_SAVE),
        }
    }

    /// Whether `script` may dead-letter, so needs the keys of the queue's
    /// dead-letter queue after the queue's own.
    pub fn dead_letters(&self, script: &Script) -> bool {
        let hash = script.get_hash();
        [
            &self.lease,
            &self.settle,
            &self.release_leases,
            &self.begin_reliable,
        ]
        .iter()
        .any(|s| s.get_hash() == hash)
    }
}
