//! The conformance suite over [`RemoteStorage`], talking gRPC to a real
//! `busmq-storage` process (memory backend).
//!
//! One process serves every test of this file: it is started by the first
//! test that needs it and kept in a `static`. Statics are never dropped, so
//! the process is stopped by the testkit's watchdog instead: a `sh` that
//! SIGKILLs it as soon as this test binary exits, however it exits (see
//! `busmq_testkit`). Each test gets its own client (its own runtime), and
//! the suite's queue names are unique, so the tests do not interfere.

use std::sync::Arc;
use std::time::Duration;

use busmq_core::{ErrorCode, Limits};
use busmq_storage::remote::RemoteStorage;
use busmq_storage::{Notification, QueueName, Storage};
use busmq_testkit::Process;
use futures::StreamExt;
use tokio::sync::OnceCell;

static STORAGE: OnceCell<Process> = OnceCell::const_new();

/// The shared storage process, started and ready.
async fn shared_process() -> &'static Process {
    STORAGE.get_or_init(busmq_testkit::storage).await
}

async fn remote() -> Arc<dyn Storage> {
    let process = shared_process().await;
    Arc::new(RemoteStorage::connect_lazy(&process.url()).expect("client of the storage process"))
}

busmq_storage::conformance_tests!(remote());

/// The status code of a call that must fail.
fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Code {
    r.expect_err("the call must fail").code()
}

fn queue(name: &str) -> QueueName {
    QueueName::parse(name, &Limits::default()).unwrap()
}

/// Kill -9 and restart of the storage process: calls fail fast while it is
/// down, the watch stream reconnects by itself and says LAGGED, and calls
/// work again. Uses its own process, not the shared one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_survives_storage_restart() {
    let process = busmq_testkit::storage().await;
    let s = RemoteStorage::connect_lazy(&process.url()).unwrap();
    let q = queue("restart.q");
    s.attach(&q, Some(Duration::from_secs(60))).await.unwrap();
    let mut watch = s.watch();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("watch connects");
    assert_eq!(first, Some(Notification::Lagged), "connected: look again");

    process.kill9();
    let started = std::time::Instant::now();
    let err = s.info(&q).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "fails fast");

    process.restart().await;
    // The watch reconnects (backoff at most 2 s) and says it may have lagged.
    let next = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.next().await {
                Some(Notification::Lagged) => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    })
    .await;
    assert_eq!(next, Ok(true), "LAGGED after reconnect");
    // The memory backend lost everything; the client works again.
    let a = s.attach(&q, Some(Duration::from_secs(60))).await.unwrap();
    assert!(!a.existed);
    s.push(&q, vec![bytes::Bytes::from_static(b"x")])
        .await
        .unwrap();
    let data = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.next().await {
                Some(Notification::Data(name)) if name == q => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    })
    .await;
    assert_eq!(data, Ok(true), "notifications flow after reconnect");
}

/// SIGTERM stops the storage process promptly and cleanly, even with an
/// open Watch stream and an open session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_exits_cleanly_on_sigterm_with_open_watch() {
    let process = busmq_testkit::storage().await;
    let s = RemoteStorage::connect_lazy(&process.url()).unwrap();
    let mut watch = s.watch();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap();
    assert_eq!(first, Some(Notification::Lagged));
    // An open session must not hold the shutdown up either.
    let q = queue("sigterm.q");
    s.attach(&q, Some(Duration::from_secs(60))).await.unwrap();
    s.push(&q, vec![bytes::Bytes::from_static(b"x")])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let status = process.terminate().await.expect("was running");
    assert!(status.success(), "exit status {status}\n{}", process.log());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "graceful shutdown took {:?}",
        started.elapsed()
    );
    let log = process.log();
    assert!(
        log.contains("busmq-storage listening on 127.0.0.1:"),
        "{log}"
    );
}

/// Bad input over the wire gets the right status codes and the server
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_statuses() {
    use busmq_proto::storage::v1 as pb;
    use busmq_proto::storage::v1::storage_client::StorageClient;
    let process = shared_process().await;
    let mut client = StorageClient::connect(process.url()).await.unwrap();

    for bad in ["", "has space", "ü", &"x".repeat(201)] {
        let r = client
            .attach(pb::AttachRequest {
                queue: bad.to_owned(),
                ttl: Some(busmq_proto::prost_types::Duration {
                    seconds: 30,
                    nanos: 0,
                }),
            })
            .await;
        assert_eq!(code(r), tonic::Code::InvalidArgument, "name {bad:?}");
    }
    let name = format!("bad-input.{}", std::process::id());
    client
        .attach(pb::AttachRequest {
            queue: name.clone(),
            ttl: Some(busmq_proto::prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
        })
        .await
        .unwrap();
    let push = |messages: Vec<bytes::Bytes>| pb::PushRequest {
        queue: name.clone(),
        messages: Some(busmq_storage::wire::pack(&messages)),
    };
    assert_eq!(
        code(client.push(push(vec![])).await),
        tonic::Code::InvalidArgument
    );
    let big = bytes::Bytes::from(vec![0u8; (1 << 20) + 1]);
    assert_eq!(
        code(client.push(push(vec![big])).await),
        tonic::Code::ResourceExhausted
    );
    let many = vec![bytes::Bytes::from_static(b"x"); 10_001];
    assert_eq!(
        code(client.push(push(many)).await),
        tonic::Code::ResourceExhausted
    );
    // Payload lengths that do not add up to the data sent with them.
    for lengths in [vec![2, 2], vec![1], vec![u32::MAX, 4]] {
        let forged = pb::PushRequest {
            queue: name.clone(),
            messages: Some(pb::Payloads {
                data: bytes::Bytes::from_static(b"abc"),
                lengths: lengths.clone(),
            }),
        };
        assert_eq!(
            code(client.push(forged).await),
            tonic::Code::InvalidArgument,
            "lengths {lengths:?}"
        );
    }
    // More messages than a batch may hold, each of them empty: refused by
    // their count.
    let empties = pb::PushRequest {
        queue: name.clone(),
        messages: Some(pb::Payloads {
            data: bytes::Bytes::new(),
            lengths: vec![0; 100_000],
        }),
    };
    assert_eq!(
        code(client.push(empties).await),
        tonic::Code::ResourceExhausted
    );
    let r = client
        .ack(busmq_proto::v1::QueueAck {
            queue: name.clone(),
            id: 7,
        })
        .await;
    assert_eq!(code(r), tonic::Code::NotFound);
    // Still serving, and nothing of the refused pushes was stored.
    let r = client
        .push(push(vec![bytes::Bytes::from_static(b"ok")]))
        .await;
    assert_eq!(r.unwrap().into_inner().first_id, 1);
}

/// The storage process serves grpc.health.v1 (SERVING for the storage
/// service) and server reflection listing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let process = shared_process().await;
    let channel = tonic::transport::Endpoint::from_shared(process.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "busmq.storage.v1.Storage"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            ServingStatus::Serving as i32,
            "health of {service:?}"
        );
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "busmq.storage.v1.Storage"),
        "{names:?}"
    );
}

/// A process that exits before serving fails `wait_ready` at once, naming
/// the binary and showing its log.
#[tokio::test]
#[should_panic(expected = "busmq-storage exited before listening")]
async fn testkit_reports_a_process_that_dies_at_startup() {
    let process = busmq_testkit::Process::builder("busmq-storage")
        .args(["--backend", "no-such-backend"])
        .spawn();
    process.wait_ready().await;
}

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(process: &Process, signal: &str) {
    let pid = process.pid().expect("running");
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// A storage process killed while operations are in flight on the
/// session: each of them fails with UNAVAILABLE naming the storage (none
/// hangs), and after a restart the next operation opens a new session and
/// works. The process is stopped (SIGSTOP) first, so the operations are
/// surely unanswered when it dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_killed_mid_flight_fails_in_flight_ops_and_recovers() {
    let process = busmq_testkit::storage().await;
    let s = Arc::new(RemoteStorage::connect_lazy(&process.url()).unwrap());
    let q = queue("session.kill.q");
    s.attach(&q, Some(Duration::from_secs(60))).await.unwrap();
    // Opens the session.
    s.push(&q, vec![bytes::Bytes::from_static(b"before")])
        .await
        .unwrap();

    signal(&process, "STOP");
    const OPS: usize = 8;
    let ops: Vec<_> = (0..OPS)
        .map(|i| {
            let (s, q) = (Arc::clone(&s), q.clone());
            tokio::spawn(async move {
                if i % 2 == 0 {
                    s.push(&q, vec![bytes::Bytes::from_static(b"x")])
                        .await
                        .map(|_| ())
                } else {
                    s.take(&q, 10, busmq_storage::TakeMode::Remove)
                        .await
                        .map(|_| ())
                }
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(10), async {
        while s.in_flight() < OPS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("every operation is on the session");

    process.kill9();
    for op in ops {
        let err = tokio::time::timeout(Duration::from_secs(10), op)
            .await
            .expect("an in-flight operation must not hang")
            .unwrap()
            .expect_err("the storage died before answering");
        assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
        assert!(err.to_string().contains(&process.url()), "{err}");
    }
    assert_eq!(s.in_flight(), 0);

    process.restart().await;
    // The memory backend lost everything; a new session serves the next ops.
    let attached = s.attach(&q, Some(Duration::from_secs(60))).await.unwrap();
    assert!(!attached.existed);
    let ids = s
        .push(&q, vec![bytes::Bytes::from_static(b"after")])
        .await
        .unwrap();
    assert_eq!(ids.first, 1);
    let taken = s
        .take(&q, 10, busmq_storage::TakeMode::Remove)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(&taken[0].payload[..], b"after");
}
