//! A listing arriving at a gRPC edge (the storage service, the broker):
//! the request checked against the edge's limits, one store call, the page
//! as sent back.

use busmq_core::Limits;
use busmq_proto::{listing, v1};

use crate::{Result, Storage};

/// `Queues.List` (and the storage's `ListQueues`) over `storage`.
pub async fn list_queues_checked(
    storage: &dyn Storage,
    limits: &Limits,
    req: &v1::ListQueuesRequest,
) -> Result<v1::ListQueuesResponse> {
    let filter = listing::queue_filter(req, limits)?;
    Ok(storage.list_queues(&filter).await?.into())
}

/// `PubSub.ListChannels` (and the storage's `ListChannels`) over `storage`.
pub async fn list_channels_checked(
    storage: &dyn Storage,
    limits: &Limits,
    req: &v1::ListChannelsRequest,
) -> Result<v1::ListChannelsResponse> {
    let filter = listing::channel_filter(req, limits)?;
    Ok(storage.list_channels(&filter).await?.into())
}
