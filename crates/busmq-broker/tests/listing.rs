//! Queues.List and PubSub.ListChannels through the broker, in both
//! deployments: thousands of queues walked in pages, filters, the limits
//! checked, channels with their subscriber counts.

use std::time::Duration;

use busmq_broker::BrokerConfig;
use busmq_core::{Error, Reason};
use busmq_proto::v1::{
    self, pub_sub_client::PubSubClient, pub_sub_event::Event, queues_client::QueuesClient,
};
use bytes::Bytes;
use futures::StreamExt;
use tonic::transport::Channel;

mod common;

/// How many queues the paging test lists.
const QUEUES: usize = 2_500;

struct Broker {
    queues: QueuesClient<Channel>,
    pubsub: PubSubClient<Channel>,
    _served: common::Served,
}

async fn broker() -> Broker {
    let served = common::serve(BrokerConfig::default()).await;
    let channel = served.channel().await;
    Broker {
        queues: QueuesClient::new(channel.clone()),
        pubsub: PubSubClient::new(channel),
        _served: served,
    }
}

impl Broker {
    async fn list(&self, filter: &str, after: &str, limit: u32) -> v1::ListQueuesResponse {
        self.queues
            .clone()
            .list(v1::ListQueuesRequest {
                filter: filter.into(),
                after: after.into(),
                limit,
            })
            .await
            .expect("list")
            .into_inner()
    }

    /// Every queue of a walk of pages of `limit`, checking page sizes.
    async fn walk(&self, filter: &str, limit: u32) -> Vec<v1::ListedQueue> {
        let mut all = Vec::new();
        let mut after = String::new();
        for _ in 0..QUEUES + 1 {
            let page = self.list(filter, &after, limit).await;
            assert!(page.queues.len() <= limit as usize);
            all.extend(page.queues);
            if page.next_after.is_empty() {
                return all;
            }
            after = page.next_after;
        }
        panic!("the walk does not end");
    }
}

fn name(i: usize) -> String {
    format!("listing.q{i:05}")
}

async fn thousands_of_queues_are_listed_once_in_pages() {
    let b = broker().await;
    futures::stream::iter(0..QUEUES)
        .map(|i| {
            let mut client = b.queues.clone();
            async move {
                client
                    .attach(v1::AttachRequest {
                        queue: name(i),
                        ttl: Some(common::secs(600)),
                        max_deliveries: None,
                    })
                    .await
                    .unwrap();
                if i % 100 == 0 {
                    client
                        .push(v1::PushRequest {
                            queue: name(i),
                            messages: vec![Bytes::from_static(b"x"); i / 100 + 1],
                        })
                        .await
                        .unwrap();
                }
            }
        })
        .buffer_unordered(64)
        .collect::<()>()
        .await;

    let want: Vec<String> = (0..QUEUES).map(name).collect();
    for limit in [1000, 333] {
        let listed = b.walk("listing.", limit).await;
        let names: Vec<&str> = listed.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, want, "pages of {limit}: each queue once, in order");
        for (i, q) in listed.iter().enumerate() {
            let count = q.info.as_ref().expect("info").count;
            let pushed = if i % 100 == 0 { i / 100 + 1 } else { 0 };
            assert_eq!(count, pushed as u64, "{}", q.name);
        }
    }
    // The default page is 100 names.
    let first = b.list("", "", 0).await;
    assert_eq!(first.queues.len(), 100);
    assert_eq!(first.next_after, name(99));
    // A filter is a substring of the name.
    let filtered = b.walk("q0012", 1000).await;
    let names: Vec<&str> = filtered.iter().map(|q| q.name.as_str()).collect();
    let want: Vec<String> = (120..130).map(name).collect();
    assert_eq!(names, want);
}

async fn bad_list_requests_are_invalid_arguments() {
    let b = broker().await;
    for (filter, after, limit) in [
        ("", "", 1001),
        ("no spaces", "", 10),
        ("", "bad/cursor", 10),
        (&*"x".repeat(300), "", 10),
    ] {
        let (mut queues, mut pubsub) = (b.queues.clone(), b.pubsub.clone());
        let queues = queues.list(v1::ListQueuesRequest {
            filter: filter.into(),
            after: after.into(),
            limit,
        });
        let channels = pubsub.list_channels(v1::ListChannelsRequest {
            filter: filter.into(),
            after: after.into(),
            limit,
        });
        let statuses = [
            queues.await.map(|_| ()).expect_err("refused"),
            channels.await.map(|_| ()).expect_err("refused"),
        ];
        for status in statuses {
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            let err = busmq_proto::from_status(status);
            assert_eq!(err.reason(), Some(Reason::InvalidArgument), "{err}");
            assert!(matches!(err, Error::InvalidArgument(_)));
        }
    }
    // The broker keeps serving.
    assert!(b.list("", "", 10).await.queues.is_empty());
}

async fn channels_are_listed_with_their_subscribers() {
    let b = broker().await;
    let mut streams = Vec::new();
    for channel in ["listing.news", "listing.news", "listing.alerts"] {
        let mut stream = b
            .pubsub
            .clone()
            .subscribe(v1::SubscribeRequest {
                channel: channel.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("subscribed in time")
            .expect("an event")
            .unwrap();
        assert!(matches!(first.event, Some(Event::Subscribed(_))));
        streams.push(stream);
    }
    let list = |after: &str, limit| {
        let mut client = b.pubsub.clone();
        let after = after.to_owned();
        async move {
            client
                .list_channels(v1::ListChannelsRequest {
                    filter: "listing.".into(),
                    after,
                    limit,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let shown = |page: &v1::ListChannelsResponse| -> Vec<(String, u64)> {
        page.channels
            .iter()
            .map(|c| (c.name.clone(), c.subscribers))
            .collect()
    };
    let all = list("", 10).await;
    assert_eq!(
        shown(&all),
        [("listing.alerts".into(), 1), ("listing.news".into(), 2)]
    );
    let first = list("", 1).await;
    assert_eq!(first.next_after, "listing.alerts");
    let second = list(&first.next_after, 1).await;
    assert_eq!(shown(&second), [("listing.news".into(), 2)]);
    assert!(second.next_after.is_empty());

    // Unsubscribing (dropping the streams) empties the listing.
    drop(streams);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !list("", 10).await.channels.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "channels linger");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

busmq_testkit::in_both_deployments!(
    thousands_of_queues_are_listed_once_in_pages(flavor = "multi_thread", worker_threads = 2),
    bad_list_requests_are_invalid_arguments,
    channels_are_listed_with_their_subscribers,
);
