//! Lease mode: acking and nacking single deliveries by their lease token,
//! and the dead-letter queue.

use busmq_proto::v1 as pb;

use crate::{ConsumeMode, Consumer, Error, Queue, Result};

/// Names one delivery of a message in lease mode: the message id and the
/// delivery's attempt. Only the current delivery's token settles the
/// message: once its lease ran out and the message went to someone else,
/// acking the old token fails instead of removing the message under the
/// new consumer's feet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken {
    /// The message id.
    pub id: u64,
    /// The delivery's attempt, from 1.
    pub attempt: u32,
}

impl From<pb::LeaseToken> for LeaseToken {
    fn from(token: pb::LeaseToken) -> Self {
        LeaseToken {
            id: token.id,
            attempt: token.attempt,
        }
    }
}

impl From<LeaseToken> for pb::LeaseToken {
    fn from(token: LeaseToken) -> Self {
        pb::LeaseToken {
            id: token.id,
            attempt: token.attempt,
        }
    }
}

/// What a [`Queue::ack_leases`] did with its tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckedLeases {
    /// Deliveries acked: their messages are removed.
    pub acked: u64,
    /// Leases that ran out or were given back: their messages are in the
    /// queue again, maybe already delivered to someone else.
    pub lapsed: Vec<LeaseToken>,
    /// Deliveries not held: never delivered, already acked, or
    /// dead-lettered.
    pub unknown: Vec<LeaseToken>,
}

impl AckedLeases {
    /// True when every token was acked.
    pub fn all_acked(&self) -> bool {
        self.lapsed.is_empty() && self.unknown.is_empty()
    }
}

/// What a [`Queue::nack`] did with the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Nacked {
    /// It is back at the front of the queue, to be delivered again.
    Requeued,
    /// That was its last delivery (the queue's max deliveries): it moved to
    /// the dead-letter queue ([`Queue::dead_letters`]).
    DeadLettered,
}

impl Queue {
    /// Lease mode: acks the delivery named by `token`, removing its message.
    ///
    /// Fails with `FailedPrecondition` when the lease ran out or was given
    /// back (the message is in the queue again, maybe already delivered to
    /// someone else), and `NotFound` when no such delivery is held (never
    /// delivered, already acked, or dead-lettered). Either way nothing
    /// changes.
    pub async fn ack_lease(&self, token: LeaseToken) -> Result<()> {
        let s = &self.shared;
        let request = pb::AckRequest {
            queue: s.name.clone(),
            target: Some(pb::ack_request::Target::Lease(token.into())),
        };
        s.client().ack(request).await.map_err(|e| s.failed(e))?;
        Ok(())
    }

    /// Lease mode: acks many deliveries of this queue in one call (as SQS's
    /// `DeleteMessageBatch`), each settled on its own as by
    /// [`ack_lease`](Self::ack_lease). A token whose lease ran out or that
    /// is not held any more changes nothing and is named in the answer;
    /// only a failure of the whole call (the queue does not exist, the
    /// broker unreachable, over 65,536 tokens) is an error.
    pub async fn ack_leases(&self, tokens: &[LeaseToken]) -> Result<AckedLeases> {
        let s = &self.shared;
        let request = pb::AckLeasesRequest {
            queue: s.name.clone(),
            leases: tokens.iter().map(|&t| t.into()).collect(),
        };
        let response = s
            .client()
            .ack_leases(request)
            .await
            .map_err(|e| s.failed(e))?
            .into_inner();
        let tokens = |list: Vec<pb::LeaseToken>| list.into_iter().map(Into::into).collect();
        Ok(AckedLeases {
            acked: response.acked,
            lapsed: tokens(response.lapsed),
            unknown: tokens(response.unknown),
        })
    }

    /// Lease mode: gives the delivery named by `token` back at once, at the
    /// front of the queue, instead of waiting for its visibility timeout. It
    /// counts as a delivery, so on the queue's last one the message moves to
    /// the dead-letter queue. Same errors as [`ack_lease`](Self::ack_lease).
    pub async fn nack(&self, token: LeaseToken) -> Result<Nacked> {
        let s = &self.shared;
        let request = pb::NackRequest {
            queue: s.name.clone(),
            lease: Some(token.into()),
        };
        let response = s
            .client()
            .nack(request)
            .await
            .map_err(|e| s.failed(e))?
            .into_inner();
        Ok(if response.dead_lettered {
            Nacked::DeadLettered
        } else {
            Nacked::Requeued
        })
    }

    /// The dead-letter queue of this queue, `<name>.dlq`: an ordinary queue
    /// where messages that used up their deliveries (see
    /// [`AttachOptions::max_deliveries`](crate::AttachOptions::max_deliveries))
    /// land with their payload, numbered anew. The server creates it with
    /// the first dead letter, unattached, living 14 days after its latest
    /// one unless someone attaches.
    pub fn dead_letters(&self) -> Queue {
        Queue::new(
            self.shared.client(),
            format!("{}{}", self.shared.name, busmq_core::DEAD_LETTER_SUFFIX),
            self.shared.reconnect,
        )
    }
}

impl Consumer {
    /// Lease mode: acks one delivery (see [`Queue::ack_lease`]). Refused
    /// with `InvalidArgument` by a consumer in another mode.
    pub async fn ack_lease(&self, token: LeaseToken) -> Result<()> {
        self.require_lease_mode()?;
        self.queue().ack_lease(token).await
    }

    /// Lease mode: acks many deliveries at once (see
    /// [`Queue::ack_leases`]). Refused with `InvalidArgument` by a consumer
    /// in another mode.
    pub async fn ack_leases(&self, tokens: &[LeaseToken]) -> Result<AckedLeases> {
        self.require_lease_mode()?;
        self.queue().ack_leases(tokens).await
    }

    /// Lease mode: gives one delivery back at once (see [`Queue::nack`]).
    /// Refused with `InvalidArgument` by a consumer in another mode.
    pub async fn nack(&self, token: LeaseToken) -> Result<Nacked> {
        self.require_lease_mode()?;
        self.queue().nack(token).await
    }

    fn require_lease_mode(&self) -> Result<()> {
        if self.mode() != ConsumeMode::Lease {
            return Err(Error::InvalidOptions(format!(
                "ack_lease and nack need a lease-mode consumer; this one is {:?}",
                self.mode()
            )));
        }
        Ok(())
    }
}
