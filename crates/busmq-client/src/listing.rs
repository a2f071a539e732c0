//! Listing what exists on the bus: [`Bus::list_queues`] and
//! [`Bus::list_channels`], a page at a time in name order, and walks over
//! every page ([`Bus::all_queues`], [`Bus::all_channels`]).

use std::future::Future;

use busmq_proto::v1 as pb;
use busmq_proto::v1::pub_sub_client::PubSubClient;

use crate::{Bus, Error, QueueInfo, Result};

/// Most names a page may hold (the server refuses more).
pub const MAX_LIST_LIMIT: u32 = busmq_core::MAX_LIST_LIMIT;

/// Which page of a listing to fetch: [`Bus::list_queues`] and
/// [`Bus::list_channels`] take one.
///
/// ```
/// use busmq_client::ListQueues;
///
/// let first = ListQueues {
///     filter: Some("orders".into()),
///     limit: Some(50),
///     ..ListQueues::default()
/// };
/// # let _ = first;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct List {
    /// Only names containing this text (characters of names only);
    /// `None` lists every name.
    pub filter: Option<String>,
    /// Only names after this one: the `next_after` of the previous page.
    /// `None` starts at the first name.
    pub after: Option<String>,
    /// Most names in the page, 1 to [`MAX_LIST_LIMIT`]; `None` leaves it
    /// to the server (100).
    pub limit: Option<u32>,
}

/// A page request of queues.
pub type ListQueues = List;

/// A page request of pub/sub channels.
pub type ListChannels = List;

/// One queue of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedQueue {
    /// The queue's name.
    pub name: String,
    /// Its state, as [`Queue::info`](crate::Queue::info) gives it.
    pub info: QueueInfo,
}

/// One page of queues, in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueuePage {
    /// The queues of the page.
    pub queues: Vec<ListedQueue>,
    /// The [`List::after`] of the next page; `None` when this is the last.
    pub next_after: Option<String>,
}

/// One pub/sub channel of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedChannel {
    /// The channel's name.
    pub name: String,
    /// Subscriptions to it right now, over every broker of the bus.
    pub subscribers: u64,
}

/// One page of pub/sub channels, in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelPage {
    /// The channels of the page: those with at least one subscriber.
    pub channels: Vec<ListedChannel>,
    /// The [`List::after`] of the next page; `None` when this is the last.
    pub next_after: Option<String>,
}

/// The request `list` is on the wire: (filter, after, limit).
fn wire(list: List) -> (String, String, u32) {
    (
        list.filter.unwrap_or_default(),
        list.after.unwrap_or_default(),
        list.limit.unwrap_or(0),
    )
}

/// A cursor as received: empty is none.
fn next(after: String) -> Option<String> {
    (!after.is_empty()).then_some(after)
}

/// Every item of every page from `filter` on, fetching pages of
/// [`MAX_LIST_LIMIT`] with `fetch` until one says it is the last.
async fn walk<T, F, Fut>(filter: Option<String>, mut fetch: F) -> Result<Vec<T>>
where
    F: FnMut(List) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<String>)>>,
{
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let (items, next) = fetch(List {
            filter: filter.clone(),
            after,
            limit: Some(MAX_LIST_LIMIT),
        })
        .await?;
        all.extend(items);
        match next {
            Some(n) => after = Some(n),
            None => return Ok(all),
        }
    }
}

impl Bus {
    /// One page of the bus's queues (dead-letter queues included) in name
    /// order, each with its state. Pass the page's `next_after` as the next
    /// request's `after` to go on; every queue that exists throughout the
    /// walk is listed once. A limit over [`MAX_LIST_LIMIT`], a filter no
    /// name can contain or a bad cursor is [`Reason::InvalidArgument`].
    ///
    /// [`Reason::InvalidArgument`]: crate::Reason::InvalidArgument
    pub async fn list_queues(&self, list: ListQueues) -> Result<QueuePage> {
        let (filter, after, limit) = wire(list);
        let page = self
            .queues_client()
            .list(pb::ListQueuesRequest {
                filter,
                after,
                limit,
            })
            .await
            .map_err(Error::from)?
            .into_inner();
        Ok(QueuePage {
            queues: page
                .queues
                .into_iter()
                .map(|q| ListedQueue {
                    name: q.name,
                    info: q.info.unwrap_or_default().into(),
                })
                .collect(),
            next_after: next(page.next_after),
        })
    }

    /// Every queue of the bus whose name contains `filter` (every queue
    /// with `None`), walking all the pages of [`Bus::list_queues`].
    pub async fn all_queues(&self, filter: Option<&str>) -> Result<Vec<ListedQueue>> {
        walk(filter.map(str::to_owned), |list| async move {
            let page = self.list_queues(list).await?;
            Ok((page.queues, page.next_after))
        })
        .await
    }

    /// One page of the pub/sub channels that have subscribers right now,
    /// in name order, each with its subscriber count; paged and checked as
    /// [`Bus::list_queues`].
    pub async fn list_channels(&self, list: ListChannels) -> Result<ChannelPage> {
        let (filter, after, limit) = wire(list);
        let page = PubSubClient::new(self.transport())
            .list_channels(pb::ListChannelsRequest {
                filter,
                after,
                limit,
            })
            .await
            .map_err(Error::from)?
            .into_inner();
        Ok(ChannelPage {
            channels: page
                .channels
                .into_iter()
                .map(|c| ListedChannel {
                    name: c.name,
                    subscribers: c.subscribers,
                })
                .collect(),
            next_after: next(page.next_after),
        })
    }

    /// Every pub/sub channel with subscribers whose name contains `filter`
    /// (every one with `None`), walking all the pages of
    /// [`Bus::list_channels`].
    pub async fn all_channels(&self, filter: Option<&str>) -> Result<Vec<ListedChannel>> {
        walk(filter.map(str::to_owned), |list| async move {
            let page = self.list_channels(list).await?;
            Ok((page.channels, page.next_after))
        })
        .await
    }
}
