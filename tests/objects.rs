//! Persistable objects across real processes: `busmq-storage` (memory, or
//! Redis) and `busmq-broker` as separate programs, driven through the Rust
//! SDK, the raw gRPC API (for what the SDK cannot even express) and the
//! `busmq` CLI.

use std::time::Duration;

use busmq_client::{Bus, ErrorCode, Loaded};
use busmq_proto::v1::{self, objects_client::ObjectsClient};
use busmq_testkit::Process;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

/// A storage process on `backend`, a broker in front of it, and a bus.
struct Setup {
    bus: Bus,
    broker: Process,
    _storage: Process,
}

async fn setup(backend: &str) -> Setup {
    let storage = busmq_testkit::storage_on(backend).await;
    let broker = busmq_testkit::broker(storage.addr()).await;
    let bus = Bus::connect(broker.url()).await.unwrap();
    Setup {
        bus,
        broker,
        _storage: storage,
    }
}

/// Whether `name` exists, read through a fresh handle.
async fn exists(bus: &Bus, name: &str) -> bool {
    bus.persistable(name).load().await.unwrap().exists
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_writes_only_dirty_fields_and_load_reads_all() {
    let s = setup("memory").await;
    let mut p = s.bus.persistable("obj");
    assert_eq!(
        p.load().await.unwrap(),
        Loaded {
            exists: false,
            id: "obj".into()
        }
    );
    p.set("foo", "hello");
    p.set("bar", 1);
    p.set("zoo", true);
    assert!(p.is_dirty());
    p.save().await.unwrap();
    assert!(!p.is_dirty(), "clean after save");

    // Another client changes bar meanwhile.
    let mut other = s.bus.persistable("obj");
    other.set("bar", 2);
    other.save().await.unwrap();

    // Only foo is dirty here: saving must not write this handle's stale bar.
    p.set("foo", "world");
    assert_eq!(p.dirty().collect::<Vec<_>>(), ["foo"]);
    p.save().await.unwrap();

    let mut p2 = s.bus.persistable("obj");
    let loaded = p2.load().await.unwrap();
    assert_eq!(
        loaded,
        Loaded {
            exists: true,
            id: "obj".into()
        }
    );
    assert_eq!(p2.get("foo"), Some(&json!("world")));
    assert_eq!(
        p2.get("bar"),
        Some(&json!(2)),
        "the other client's save stands"
    );
    assert_eq!(p2.get("zoo"), Some(&json!(true)));
    assert!(!p2.is_dirty(), "load marks everything clean");

    // Values are any JSON, kept as such.
    p2.set("nested", json!({"list": [1, "two", null], "ok": false}));
    p2.save().await.unwrap();
    let mut p3 = s.bus.persistable("obj");
    p3.load().await.unwrap();
    assert_eq!(
        p3.get("nested"),
        Some(&json!({"list": [1, "two", null], "ok": false}))
    );
}

/// persist(ttl) keeps the object alive well past its ttl; after unpersist
/// it expires once the ttl runs out.
async fn persist_keeps_alive_and_unpersist_lets_expire(bus: &Bus) {
    let mut p = bus.persistable("session:1");
    p.set("user", "ann");
    p.persist(Duration::from_secs(1)).await.unwrap();
    assert!(p.is_persisted());
    p.save().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(exists(bus, "session:1").await, "alive 3 ttls later");

    p.unpersist();
    assert!(!p.is_persisted());
    let deadline = tokio::time::Instant::now() + WAIT;
    while exists(bus, "session:1").await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still there {WAIT:?} after unpersist with a 1 s ttl"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut gone = bus.persistable("session:1");
    let loaded = gone.load().await.unwrap();
    assert!(!loaded.exists);
    assert_eq!(gone.get("user"), None, "expired with its fields");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persist_and_unpersist_over_a_storage_process() {
    let s = setup("memory").await;
    persist_keeps_alive_and_unpersist_lets_expire(&s.bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persist_and_unpersist_over_redis() {
    let redis = busmq_testkit::redis::redis_server().await;
    let s = setup(&redis.url()).await;
    persist_keeps_alive_and_unpersist_lets_expire(&s.bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_clear_errors() {
    let s = setup("memory").await;

    // A non-JSON value: the SDK cannot even build one, so raw gRPC.
    let mut raw = ObjectsClient::connect(s.broker.url()).await.unwrap();
    let err = raw
        .save(v1::SaveObjectRequest {
            name: "obj".into(),
            fields: vec![v1::ObjectField {
                name: "greeting".into(),
                json: "hello".into(),
            }],
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(
        err.message().contains("\"greeting\"") && err.message().contains("not JSON"),
        "{err}"
    );
    assert!(!exists(&s.bus, "obj").await, "nothing was saved");

    // persist with ttl 0: refused by the SDK, and by the server too.
    let mut p = s.bus.persistable("obj");
    let err = p.persist(Duration::ZERO).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    assert!(!p.is_persisted());
    let err = raw
        .touch(v1::TouchObjectRequest {
            name: "obj".into(),
            ttl: Some(busmq_proto::prost_types::Duration::default()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    // Bad object names.
    for bad in ["has space", "", "{braces}"] {
        let mut p = s.bus.persistable(bad);
        let err = p.load().await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{bad:?}: {err}");
        assert!(err.to_string().contains("invalid object name"), "{err}");
        p.set("a", 1);
        let err = p.save().await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{bad:?}: {err}");
        assert!(p.is_dirty(), "a failed save keeps the fields dirty");
    }
}

async fn cli(broker: &Process, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(busmq_testkit::bin_path("busmq"))
        .args(args)
        .args(["--server", &broker.url()])
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_object_set_and_get_round_trip() {
    let s = setup("memory").await;
    let missing = cli(&s.broker, &["object", "get", "config"]).await;
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("does not exist"),
        "{missing:?}"
    );

    for (field, value) in [
        ("name", "\"bus\""),
        ("port", "50051"),
        ("tags", "[\"a\",\"b\"]"),
    ] {
        let out = cli(&s.broker, &["object", "set", "config", field, value]).await;
        assert!(out.status.success(), "{out:?}");
    }
    let out = cli(&s.broker, &["object", "get", "config"]).await;
    assert!(out.status.success(), "{out:?}");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        printed,
        json!({"name": "bus", "port": 50051, "tags": ["a", "b"]})
    );

    // The SDK sees what the CLI wrote.
    let mut p = s.bus.persistable("config");
    assert!(p.load().await.unwrap().exists);
    assert_eq!(p.get("port"), Some(&json!(50051)));

    // A value that is not JSON is a clear error, and nothing is written.
    let out = cli(&s.broker, &["object", "set", "config", "name", "plain"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not JSON"), "{stderr}");
    let out = cli(&s.broker, &["object", "get", "config"]).await;
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["name"], json!("bus"));

    // --ttl makes it expire.
    let out = cli(
        &s.broker,
        &["object", "set", "temp", "v", "1", "--ttl", "1"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(exists(&s.bus, "temp").await);
    let deadline = tokio::time::Instant::now() + WAIT;
    while exists(&s.bus, "temp").await {
        assert!(tokio::time::Instant::now() < deadline, "temp never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
