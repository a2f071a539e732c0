//! Settling a lease named by a message id (and maybe its attempt): the
//! done of the message-queue API, and `/v1`'s ack and nack.

use std::time::Instant;

use axum::http::StatusCode;
use busmq_client::{LeaseToken, Queue, Reason};

use crate::Gateway;
use crate::error::HttpError;

/// The attempt of the lease of message `id` of `queue` this gateway handed
/// out, or a 404 (a 400 for a queue name the broker refuses).
async fn booked_attempt(gw: &Gateway, queue: &str, id: u64) -> Result<u32, HttpError> {
    if let Some(attempt) = gw.leases.attempt(queue, id, Instant::now()) {
        return Ok(attempt);
    }
    // Names are the broker's to judge: a bad one is the client's mistake to
    // hear about (400), not a missing lease. Any other failure leaves the
    // answer as it is: this gateway holds no lease of the message.
    if let Err(e) = gw.bus.queue(queue).exists().await
        && e.reason() == Some(Reason::InvalidName)
    {
        return Err(e.into());
    }
    Err(HttpError::LeaseNotFound(format!(
        "message {id} of queue {queue:?} is not leased through this gateway \
         (unknown, already done, or its lease expired)"
    )))
}

/// Settles the lease of message `id` of `queue` with `op` (an ack or a
/// nack): the delivery `attempt` when the client names it, else the one
/// this gateway's lease book holds. The book forgets the lease once it is
/// settled or refused as gone.
pub(crate) async fn settle_lease<T, F, Fut>(
    gw: &Gateway,
    queue: &str,
    id: u64,
    attempt: Option<u32>,
    op: F,
) -> Result<T, HttpError>
where
    F: FnOnce(Queue, LeaseToken) -> Fut,
    Fut: Future<Output = Result<T, busmq_client::Error>>,
{
    let attempt = match attempt {
        Some(attempt) => attempt,
        None => booked_attempt(gw, queue, id).await?,
    };
    // Not `with_queue`: a settle must not create a queue, and a lease of a
    // queue that vanished is gone with it (404).
    match op(gw.bus.queue(queue), LeaseToken { id, attempt }).await {
        Ok(settled) => {
            gw.leases.remove(queue, id, attempt);
            Ok(settled)
        }
        Err(e) => {
            let err = HttpError::done(id, e);
            if err.status() == StatusCode::NOT_FOUND {
                gw.leases.remove(queue, id, attempt);
            }
            Err(err)
        }
    }
}
