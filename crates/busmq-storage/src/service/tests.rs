use super::*;
use crate::memory::MemoryStorage;

fn service() -> StorageService {
    StorageService::new(Arc::new(MemoryStorage::new()), Limits::default())
}

fn secs(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

#[tokio::test]
async fn rejects_bad_input_with_codes() {
    let svc = service();
    let bad_name = svc
        .attach(Request::new(pb::AttachRequest {
            queue: "no spaces".into(),
            ttl: Some(secs(30)),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad_name.code(), tonic::Code::InvalidArgument);

    let huge_ttl = svc
        .attach(Request::new(pb::AttachRequest {
            queue: "q".into(),
            ttl: Some(secs(i64::MAX)),
        }))
        .await
        .unwrap_err();
    assert_eq!(huge_ttl.code(), tonic::Code::InvalidArgument);

    svc.attach(Request::new(pb::AttachRequest {
        queue: "q".into(),
        ttl: Some(secs(30)),
    }))
    .await
    .unwrap();
    let empty = svc
        .push(Request::new(pb::PushRequest {
            queue: "q".into(),
            messages: Some(wire::pack(&[])),
        }))
        .await
        .unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);

    let big = svc
        .push(Request::new(pb::PushRequest {
            queue: "q".into(),
            messages: Some(wire::pack(&[vec![0u8; (1 << 20) + 1].into()])),
        }))
        .await
        .unwrap_err();
    assert_eq!(big.code(), tonic::Code::ResourceExhausted);

    let huge_lease = svc
        .begin_reliable(Request::new(pb::BeginReliableRequest {
            queue: "q".into(),
            owner: "me".into(),
            lease: Some(secs(i64::MAX)),
            last: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(huge_lease.code(), tonic::Code::InvalidArgument);

    let no_owner = svc
        .renew_reliable(Request::new(pb::ReliableLockRequest {
            queue: "q".into(),
            owner: String::new(),
            lease: Some(secs(1)),
        }))
        .await
        .unwrap_err();
    assert_eq!(no_owner.code(), tonic::Code::InvalidArgument);

    let missing = svc
        .push(Request::new(pb::PushRequest {
            queue: "missing".into(),
            messages: Some(wire::pack(&[bytes::Bytes::from_static(b"x")])),
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn rejects_bad_pubsub_and_object_input_with_codes() {
    let svc = service();
    let bad_channel = svc
        .publish(Request::new(v1::PublishRequest {
            channel: "no spaces".into(),
            message: bytes::Bytes::from_static(b"x"),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad_channel.code(), tonic::Code::InvalidArgument);
    assert!(bad_channel.message().contains("invalid channel name"));
    let big = svc
        .publish(Request::new(v1::PublishRequest {
            channel: "c".into(),
            message: vec![0u8; (1 << 20) + 1].into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(big.code(), tonic::Code::ResourceExhausted);
    let Err(bad_subscribe) = svc
        .subscribe(Request::new(v1::SubscribeRequest {
            channel: String::new(),
        }))
        .await
    else {
        panic!("an empty channel name must be refused");
    };
    assert_eq!(bad_subscribe.code(), tonic::Code::InvalidArgument);

    let save = |object: &str, value: &str, ttl_secs: Option<i64>| {
        svc.object_save(Request::new(pb::ObjectSaveRequest {
            object: object.into(),
            fields: vec![v1::ObjectField {
                name: "f".into(),
                json: value.into(),
            }],
            ttl: ttl_secs.map(secs),
        }))
    };
    let not_json = save("o", "plain", None).await.unwrap_err();
    assert_eq!(not_json.code(), tonic::Code::InvalidArgument);
    assert!(not_json.message().contains("not JSON"), "{not_json}");
    let zero_ttl = save("o", "1", Some(0)).await.unwrap_err();
    assert_eq!(zero_ttl.code(), tonic::Code::InvalidArgument);
    let bad_name = save("o o", "1", None).await.unwrap_err();
    assert_eq!(bad_name.code(), tonic::Code::InvalidArgument);
    save("o", "1", None).await.unwrap();
    let zero_touch = svc
        .object_touch(Request::new(pb::ObjectTouchRequest {
            object: "o".into(),
            ttl: Some(secs(0)),
        }))
        .await
        .unwrap_err();
    assert_eq!(zero_touch.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn slow_watcher_gets_lagged() {
    let (src_tx, src_rx) = mpsc::unbounded_channel();
    let source = tokio_stream::wrappers::UnboundedReceiverStream::new(src_rx).boxed();
    let (tx, mut rx) = mpsc::channel(2);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(forward_notifications(source, tx, shutdown.clone()));
    let q = QueueName::parse("q", &Limits::default()).unwrap();
    for _ in 0..10 {
        src_tx.send(Notification::Data(q.clone())).unwrap();
    }
    // Let the forwarder fill the channel and start dropping.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut kinds = Vec::new();
    for _ in 0..3 {
        kinds.push(rx.recv().await.unwrap().unwrap().kind);
    }
    assert_eq!(
        kinds,
        vec![
            pb::NotificationKind::Data as i32,
            pb::NotificationKind::Data as i32,
            pb::NotificationKind::Lagged as i32
        ]
    );
    shutdown.cancel();
    task.await.unwrap();
    assert!(rx.recv().await.is_none(), "stream ends on shutdown");
}
