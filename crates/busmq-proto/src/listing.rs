//! Listings of queues and channels ([`busmq_core::listing`]) to and from
//! the wire: the one conversion the broker, the storage service and its
//! client share.

use busmq_core::{
    ChannelFilter, ChannelName, ChannelPage, Error, Limits, ListName, QueueFilter, QueueName,
    QueuePage, Result,
};

use crate::v1;

/// Names a busmq server sent: checked by it already against its own limits,
/// so only the character rules are held here.
fn sent_name<N: ListName>(name: &str) -> Result<N> {
    let limits = Limits {
        max_name_len: usize::MAX,
        ..Limits::default()
    };
    N::parse_name(name, &limits)
        .map_err(|e| Error::Internal(format!("the server listed a bad name: {e}")))
}

/// The cursor of the next page as sent: empty for none.
fn cursor<N: AsRef<str>>(after: Option<&N>) -> String {
    after.map(|n| n.as_ref().to_owned()).unwrap_or_default()
}

/// The next page's cursor as received.
fn sent_cursor<N: ListName>(next_after: &str) -> Result<Option<N>> {
    (!next_after.is_empty())
        .then(|| sent_name(next_after))
        .transpose()
}

/// The two conversions of one kind of page request: to the wire, and from
/// it checked.
macro_rules! requests {
    ($what:literal, $request:ident, $filter:ty, $to:ident, $from:ident) => {
        #[doc = concat!("A ", $what, " page request as sent.")]
        pub fn $to(filter: &$filter) -> v1::$request {
            v1::$request {
                filter: filter.contains.clone().unwrap_or_default(),
                after: cursor(filter.after.as_ref()),
                limit: filter.limit,
            }
        }

        #[doc = concat!("A ", $what, " page request as received, checked against `limits`.")]
        pub fn $from(req: &v1::$request, limits: &Limits) -> Result<$filter> {
            <$filter>::from_request(&req.filter, &req.after, req.limit, limits)
        }
    };
}

requests!(
    "queue",
    ListQueuesRequest,
    QueueFilter,
    queues_request,
    queue_filter
);
requests!(
    "channel",
    ListChannelsRequest,
    ChannelFilter,
    channels_request,
    channel_filter
);

impl From<QueuePage> for v1::ListQueuesResponse {
    fn from(page: QueuePage) -> Self {
        v1::ListQueuesResponse {
            next_after: cursor(page.next_after.as_ref()),
            queues: page
                .items
                .into_iter()
                .map(|(name, info)| v1::ListedQueue {
                    name: name.to_string(),
                    info: Some(info.into()),
                })
                .collect(),
        }
    }
}

/// A queue page as received from a busmq server.
pub fn queue_page(resp: v1::ListQueuesResponse) -> Result<QueuePage> {
    Ok(QueuePage {
        next_after: sent_cursor(&resp.next_after)?,
        items: resp
            .queues
            .into_iter()
            .map(|q| {
                Ok((
                    sent_name::<QueueName>(&q.name)?,
                    q.info.unwrap_or_default().into(),
                ))
            })
            .collect::<Result<_>>()?,
    })
}

impl From<ChannelPage> for v1::ListChannelsResponse {
    fn from(page: ChannelPage) -> Self {
        v1::ListChannelsResponse {
            next_after: cursor(page.next_after.as_ref()),
            channels: page
                .items
                .into_iter()
                .map(|(name, subscribers)| v1::ListedChannel {
                    name: name.to_string(),
                    subscribers,
                })
                .collect(),
        }
    }
}

/// A channel page as received from a busmq server.
pub fn channel_page(resp: v1::ListChannelsResponse) -> Result<ChannelPage> {
    Ok(ChannelPage {
        next_after: sent_cursor(&resp.next_after)?,
        items: resp
            .channels
            .into_iter()
            .map(|c| Ok((sent_name::<ChannelName>(&c.name)?, c.subscribers)))
            .collect::<Result<_>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_trip() {
        let limits = Limits::default();
        let filter = QueueFilter::from_request("a", "a.1", 5, &limits).unwrap();
        assert_eq!(
            queue_filter(&queues_request(&filter), &limits).unwrap(),
            filter
        );
        let name = QueueName::parse("a.2", &limits).unwrap();
        let page = QueuePage {
            items: vec![(name.clone(), busmq_core::QueueInfo::default())],
            next_after: Some(name),
        };
        assert_eq!(queue_page(page.clone().into()).unwrap(), page);
        let channel = ChannelName::parse("news", &limits).unwrap();
        let page = ChannelPage {
            items: vec![(channel, 3)],
            next_after: None,
        };
        assert_eq!(channel_page(page.clone().into()).unwrap(), page);
    }

    #[test]
    fn a_bad_listed_name_is_an_error_not_a_panic() {
        let resp = v1::ListQueuesResponse {
            queues: vec![v1::ListedQueue {
                name: "no spaces".into(),
                info: None,
            }],
            next_after: String::new(),
        };
        assert!(matches!(queue_page(resp), Err(Error::Internal(_))));
    }
}
