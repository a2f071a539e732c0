//! The broker's pub/sub and persistable object services: a broker on port 0
//! over an in-process memory store and over a storage process, driven
//! through the generated gRPC clients. Cross-process and cross-broker behaviour is in the
//! workspace's `tests/` package.

use std::time::Duration;

use busmq_broker::BrokerConfig;
use busmq_proto::v1::{
    self, ObjectField, objects_client::ObjectsClient, pub_sub_client::PubSubClient,
    pub_sub_event::Event,
};
use bytes::Bytes;
use tonic::Code;
use tonic::transport::Channel;

mod common;

struct Broker {
    pubsub: PubSubClient<Channel>,
    objects: ObjectsClient<Channel>,
    _served: common::Served,
}

async fn broker() -> Broker {
    let served = common::serve(BrokerConfig::default()).await;
    let channel = served.channel().await;
    Broker {
        pubsub: PubSubClient::new(channel.clone()),
        objects: ObjectsClient::new(channel),
        _served: served,
    }
}

impl Broker {
    async fn publish(&self, channel: &str, message: &'static str) -> Result<u64, tonic::Status> {
        Ok(self
            .pubsub
            .clone()
            .publish(v1::PublishRequest {
                channel: channel.into(),
                message: Bytes::from_static(message.as_bytes()),
            })
            .await?
            .into_inner()
            .receivers)
    }

    async fn subscribe(
        &self,
        channel: &str,
    ) -> Result<tonic::Streaming<v1::PubSubEvent>, tonic::Status> {
        Ok(self
            .pubsub
            .clone()
            .subscribe(v1::SubscribeRequest {
                channel: channel.into(),
            })
            .await?
            .into_inner())
    }

    async fn save(
        &self,
        name: &str,
        fields: &[(&str, &str)],
        ttl_seconds: Option<i64>,
    ) -> Result<(), tonic::Status> {
        self.objects
            .clone()
            .save(v1::SaveObjectRequest {
                name: name.into(),
                fields: fields
                    .iter()
                    .map(|(n, j)| ObjectField {
                        name: n.to_string(),
                        json: j.to_string(),
                    })
                    .collect(),
                ttl: ttl_seconds.map(common::secs),
            })
            .await?;
        Ok(())
    }

    async fn load(&self, name: &str) -> Result<v1::LoadObjectResponse, tonic::Status> {
        Ok(self
            .objects
            .clone()
            .load(v1::LoadObjectRequest { name: name.into() })
            .await?
            .into_inner())
    }

    async fn touch(&self, name: &str, ttl_seconds: i64) -> Result<bool, tonic::Status> {
        Ok(self
            .objects
            .clone()
            .touch(v1::TouchObjectRequest {
                name: name.into(),
                ttl: Some(common::secs(ttl_seconds)),
            })
            .await?
            .into_inner()
            .exists)
    }
}

async fn next_event(stream: &mut tonic::Streaming<v1::PubSubEvent>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .expect("stream open")
        .event
        .expect("an event")
}

async fn subscribe_confirms_then_delivers_what_is_published() {
    let b = broker().await;
    assert_eq!(b.publish("news", "before").await.unwrap(), 0);
    let mut s1 = b.subscribe("news").await.unwrap();
    let mut s2 = b.subscribe("news").await.unwrap();
    assert!(matches!(next_event(&mut s1).await, Event::Subscribed(_)));
    assert!(matches!(next_event(&mut s2).await, Event::Subscribed(_)));
    assert_eq!(b.publish("news", "hello").await.unwrap(), 2);
    for s in [&mut s1, &mut s2] {
        assert_eq!(
            next_event(s).await,
            Event::Messages(v1::PublishedMessages {
                messages: vec![Bytes::from_static(b"hello")]
            })
        );
    }
    drop(s2);
    // The broker notices the cancelled stream asynchronously.
    let mut receivers = 2;
    for _ in 0..100 {
        receivers = b.publish("news", "again").await.unwrap();
        if receivers == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receivers, 1, "an unsubscribed stream stops counting");
}

async fn bad_channel_names_are_invalid_arguments() {
    let b = broker().await;
    for bad in ["", "has space", "ü", &"x".repeat(201)] {
        let err = b.publish(bad, "m").await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err}");
        assert!(err.message().contains("invalid channel name"), "{err}");
        let err = b.subscribe(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err}");
    }
}

async fn objects_save_only_what_is_sent_and_load_everything() {
    let b = broker().await;
    let missing = b.load("obj").await.unwrap();
    assert!(!missing.exists);
    assert_eq!(missing.id, "obj");
    assert!(!b.touch("obj", 30).await.unwrap());
    b.save("obj", &[("foo", "\"hello\""), ("bar", "1")], None)
        .await
        .unwrap();
    b.save("obj", &[("foo", "\"world\"")], None).await.unwrap();
    let loaded = b.load("obj").await.unwrap();
    assert!(loaded.exists);
    assert_eq!(loaded.id, "obj");
    let fields: Vec<(String, String)> = loaded
        .fields
        .into_iter()
        .map(|f| (f.name, f.json))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("bar".to_owned(), "1".to_owned()),
            ("foo".to_owned(), "\"world\"".to_owned())
        ]
    );
    assert!(b.touch("obj", 30).await.unwrap());
}

async fn non_json_values_are_refused_and_nothing_is_saved() {
    let b = broker().await;
    for bad in ["hello", "{", "1 2", "", "'single'"] {
        let err = b
            .save("obj", &[("ok", "true"), ("field", bad)], None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err}");
        assert!(
            err.message().contains("\"field\"") && err.message().contains("not JSON"),
            "{err}"
        );
    }
    assert!(!b.load("obj").await.unwrap().exists, "no field was written");
}

async fn ttl_zero_and_bad_object_names_are_invalid_arguments() {
    let b = broker().await;
    b.save("obj", &[("a", "1")], None).await.unwrap();
    let err = b.touch("obj", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("ttl"), "{err}");
    let err = b.save("obj", &[("a", "1")], Some(0)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    for bad in ["", "a b", "braces{}"] {
        let err = b.load(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err}");
        assert!(err.message().contains("invalid object name"), "{err}");
    }
    let err = b.save("obj", &[], None).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "no fields: {err}");
    let err = b.save("obj", &[("", "1")], None).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "empty field name: {err}");
}

/// A subscriber that stops reading costs bounded memory: once its buffers
/// (a 64 KiB HTTP/2 window here, and about a thousand messages per hop)
/// are full, messages are dropped for it alone, and when it reads again it
/// is told exactly how many it missed, before the next message.
///
/// Messages of 300 bytes: a client library that buffers many unread
/// frames of under 256 bytes takes them for a flood and cuts the
/// connection itself (h2's small-frame budget), which would end this
/// subscriber before the broker's buffers fill.
async fn a_stalled_subscriber_drops_with_an_exact_notice() {
    const TOTAL: u64 = 10_000;
    let served = common::serve(BrokerConfig::default()).await;
    let url = served.url();
    let mut publisher = PubSubClient::connect(url.clone()).await.unwrap();
    // The subscriber's client has a small receive window, so the transport
    // does not hide the drops behind megabytes of buffer.
    let small_window = Channel::from_shared(url)
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut stalled = PubSubClient::new(small_window)
        .subscribe(v1::SubscribeRequest {
            channel: "firehose".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        next_event(&mut stalled).await,
        Event::Subscribed(_)
    ));
    let publish = |message: Bytes| v1::PublishRequest {
        channel: "firehose".into(),
        message,
    };
    for i in 0..TOTAL {
        let receivers = publisher
            .publish(publish(Bytes::from(format!("{i:0300}"))))
            .await
            .unwrap()
            .into_inner()
            .receivers;
        assert!(receivers <= 1);
    }
    let (mut received, mut missed, mut previous) = (0u64, 0u64, None::<u64>);
    let (mut batches, mut last, mut last_sent) = (0u64, false, false);
    while !last {
        let event = match tokio::time::timeout(Duration::from_millis(500), stalled.message()).await
        {
            Ok(message) => message
                .unwrap()
                .expect("stream open")
                .event
                .expect("an event"),
            Err(_) if !last_sent => {
                // Drained: now a message after the gap fits, and the notice
                // of what was dropped comes just before it.
                publisher
                    .publish(publish(Bytes::from_static(b"last")))
                    .await
                    .unwrap();
                last_sent = true;
                continue;
            }
            Err(_) => panic!("the message after the gap never came"),
        };
        match event {
            Event::Messages(batch) => {
                batches += 1;
                for m in batch.messages {
                    assert!(!last, "nothing after the last message");
                    if m == "last" {
                        last = true;
                        continue;
                    }
                    let n: u64 = std::str::from_utf8(&m).unwrap().parse().unwrap();
                    assert!(previous.is_none_or(|p| p < n), "in order");
                    previous = Some(n);
                    received += 1;
                }
            }
            Event::Missed(n) => missed += n,
            Event::Subscribed(_) => panic!("subscribed twice"),
        }
    }
    assert!(missed > 0, "buffers are bounded: something was dropped");
    assert!(received > 0);
    assert_eq!(received + missed, TOTAL, "every drop is accounted for");
    assert!(
        batches < received,
        "a subscriber that is behind gets messages in batches"
    );
}

busmq_testkit::in_both_deployments!(
    subscribe_confirms_then_delivers_what_is_published,
    bad_channel_names_are_invalid_arguments,
    objects_save_only_what_is_sent_and_load_everything,
    non_json_values_are_refused_and_nothing_is_saved,
    ttl_zero_and_bad_object_names_are_invalid_arguments,
    a_stalled_subscriber_drops_with_an_exact_notice,
);
