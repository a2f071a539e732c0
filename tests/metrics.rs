//! Prometheus `/metrics` of real processes, read as a scraper reads it: a
//! plain HTTP GET of each service's admin port after the SDK pushed and
//! consumed through them.

use std::net::SocketAddr;
use std::time::Duration;

use busmq_client::{AttachOptions, Bus, ConsumeOptions};
use busmq_testkit::Process;
use busmq_testkit::scrape::{self, get, http, scrape, value};
use futures::StreamExt;

/// How long a series may take to show what the test did: depth is
/// sampled every 5 s, so a few rounds.
const SHOW_TIMEOUT: Duration = Duration::from_secs(30);

/// Scrapes `addr` until `series` reads `want`; panics with the last
/// scrape when it does not within [`SHOW_TIMEOUT`].
async fn until_value(addr: SocketAddr, series: &str, want: f64) -> String {
    scrape::until_value(addr, series, want, SHOW_TIMEOUT).await
}

/// The `queue` labels of every `name` series.
fn queue_labels(metrics: &str, name: &str) -> Vec<String> {
    let prefix = format!("{name}{{queue=\"");
    let mut labels: Vec<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| l.split_once('"').map(|(q, _)| q.to_owned()))
        .collect();
    labels.sort();
    labels
}

/// A storage process on `backend` and a broker in front of it, both with
/// metrics on free ports; the broker with `broker_args` besides.
async fn split(backend: &str, broker_args: &[&str]) -> (Process, SocketAddr, Process, SocketAddr) {
    let (builder, storage_metrics) = Process::builder("busmq-storage").metrics();
    let listen = builder.listen_addr().to_string();
    let data_dir = builder.dir().join("data");
    let storage = builder
        .args(["--listen", &listen, "--backend", backend])
        .arg("--data-dir")
        .arg(&data_dir)
        .spawn();
    storage.wait_ready().await;
    let (builder, broker_metrics) = Process::builder("busmq-broker").metrics();
    let listen = builder.listen_addr().to_string();
    let broker = builder
        .args(["--listen", &listen, "--storage", &storage.url()])
        .args(broker_args)
        .spawn();
    broker.wait_ready().await;
    (storage, storage_metrics, broker, broker_metrics)
}

#[tokio::test]
async fn a_broker_and_its_storage_show_what_went_through_them() {
    let (_storage, storage_metrics, broker, broker_metrics) = split("embedded", &[]).await;
    let bus = Bus::connect(broker.url()).await.unwrap();
    let q = bus.queue("orders");
    q.attach(AttachOptions::default()).await.unwrap();
    q.push_batch((0..5).map(|i| format!("m{i}"))).await.unwrap();
    q.push("m5").await.unwrap();
    let mut consumer = q
        .consume(ConsumeOptions::default().prefetch(4).max(4))
        .await
        .unwrap();
    for _ in 0..4 {
        consumer.next().await.unwrap().unwrap();
    }
    // One refused call, to be counted under its code.
    assert!(bus.queue("missing").info().await.is_err());
    // A reliable consumer leaves the one message it takes pending.
    let mut reliable = q.consume(ConsumeOptions::reliable().max(1)).await.unwrap();
    reliable.next().await.unwrap().unwrap();
    // A consumer that stays, to be counted while it runs: persistent from
    // an id not pushed yet, so it takes nothing.
    let staying = q.consume(ConsumeOptions::persistent(100)).await.unwrap();

    // The reliable consumer ended at its max; the persistent one runs.
    until_value(
        broker_metrics,
        r#"busmq_queue_consumers{queue="orders"}"#,
        1.0,
    )
    .await;
    let metrics = until_value(broker_metrics, r#"busmq_queue_depth{queue="orders"}"#, 1.0).await;
    let has = |series: &str, want: f64| {
        assert_eq!(
            value(&metrics, series),
            Some(want),
            "{series} in the broker's /metrics:\n{metrics}"
        );
    };
    has(r#"busmq_messages_pushed_total{queue="orders"}"#, 6.0);
    has(
        r#"busmq_messages_delivered_total{queue="orders",mode="unreliable"}"#,
        4.0,
    );
    has(
        r#"busmq_messages_delivered_total{queue="orders",mode="reliable"}"#,
        1.0,
    );
    has(r#"busmq_queue_pending{queue="orders"}"#, 1.0);
    has(
        r#"busmq_grpc_requests_total{service="busmq.v1.Queues",method="Push",code="OK"}"#,
        2.0,
    );
    has(
        r#"busmq_grpc_requests_total{service="busmq.v1.Queues",method="Info",code="NOT_FOUND"}"#,
        1.0,
    );
    has("busmq_push_duration_seconds_count", 2.0);
    assert!(
        value(&metrics, "busmq_grpc_connections").is_some_and(|c| c >= 1.0),
        "the SDK's connection is counted:\n{metrics}"
    );
    assert!(
        metrics.contains("# TYPE busmq_take_duration_seconds histogram"),
        "{metrics}"
    );

    let stored = scrape(storage_metrics).await;
    let commits = value(
        &stored,
        r#"busmq_store_commit_duration_seconds_count{backend="embedded"}"#,
    );
    assert!(
        commits.is_some_and(|c| c >= 1.0),
        "the storage's group commits are timed:\n{stored}"
    );
    assert_eq!(
        value(&stored, r#"busmq_storage_operations_total{op="push"}"#),
        Some(2.0),
        "{stored}"
    );
    assert!(
        value(
            &stored,
            r#"busmq_grpc_requests_total{service="busmq.storage.v1.Storage",method="Attach",code="OK"}"#
        )
        .is_some_and(|c| c >= 1.0),
        "{stored}"
    );
    // Message counts are the broker's: a scrape of both never counts a
    // message twice.
    assert!(!stored.contains("busmq_messages_pushed_total"), "{stored}");

    drop(staying);
    until_value(
        broker_metrics,
        r#"busmq_queue_consumers{queue="orders"}"#,
        0.0,
    )
    .await;
}

#[tokio::test]
async fn lease_redeliveries_and_dead_letters_are_counted() {
    let (_storage, storage_metrics, broker, broker_metrics) = split("memory", &[]).await;
    let bus = Bus::connect(broker.url()).await.unwrap();
    let q = bus.queue("jobs");
    q.attach(AttachOptions::default().max_deliveries(2))
        .await
        .unwrap();
    q.push("job").await.unwrap();
    let consumer = q
        .consume(ConsumeOptions::lease(Duration::from_secs(30)).prefetch(1))
        .await
        .unwrap();
    let mut consumer = consumer;
    for attempt in 1..=2 {
        let d = consumer.next().await.unwrap().unwrap();
        assert_eq!(d.attempt, attempt);
        consumer.nack(d.lease_token().unwrap()).await.unwrap();
    }
    let metrics = until_value(
        broker_metrics,
        r#"busmq_messages_delivered_total{queue="jobs",mode="lease"}"#,
        2.0,
    )
    .await;
    assert_eq!(
        value(&metrics, r#"busmq_redeliveries_total{queue="jobs"}"#),
        Some(1.0),
        "{metrics}"
    );
    // The second nack was the last delivery: the store dead-lettered it.
    until_value(
        storage_metrics,
        r#"busmq_dead_lettered_total{queue="jobs"}"#,
        1.0,
    )
    .await;
}

#[tokio::test]
async fn queues_beyond_the_cap_are_counted_as_other() {
    let (_storage, _, broker, broker_metrics) =
        split("memory", &["--metrics-max-queues", "3"]).await;
    let bus = Bus::connect(broker.url()).await.unwrap();
    for n in 0..40 {
        let q = bus.queue(format!("q{n:02}"));
        q.attach(AttachOptions::default()).await.unwrap();
        q.push("m").await.unwrap();
    }
    let metrics = until_value(broker_metrics, r#"busmq_queue_depth{queue="other"}"#, 37.0).await;
    assert_eq!(
        value(&metrics, r#"busmq_messages_pushed_total{queue="other"}"#),
        Some(37.0),
        "{metrics}"
    );
    for name in [
        "busmq_messages_pushed_total",
        "busmq_queue_depth",
        "busmq_queue_pending",
    ] {
        assert_eq!(
            queue_labels(&metrics, name),
            ["other", "q00", "q01", "q02"],
            "{name}: the first three queues and the rest as one:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn by_default_a_hundred_queues_have_series_of_their_own() {
    let (_storage, _, broker, broker_metrics) = split("memory", &[]).await;
    let bus = Bus::connect(broker.url()).await.unwrap();
    let queues: Vec<_> = (0..130).map(|n| bus.queue(format!("many{n:03}"))).collect();
    let pushes = queues.iter().map(|q| async move {
        q.attach(AttachOptions::default()).await.unwrap();
        q.push("m").await.unwrap();
    });
    futures::future::join_all(pushes).await;
    let metrics = scrape(broker_metrics).await;
    let labels = queue_labels(&metrics, "busmq_messages_pushed_total");
    assert_eq!(labels.len(), 101, "100 queues and other: {labels:?}");
    assert!(labels.iter().any(|l| l == "other"), "{labels:?}");
    assert_eq!(
        value(&metrics, r#"busmq_messages_pushed_total{queue="other"}"#),
        Some(30.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn busmq_serve_has_one_endpoint_for_both_services() {
    let (builder, metrics_addr) = Process::builder("busmq").metrics();
    let serve = builder.serve("embedded").0.spawn();
    serve.wait_ready().await;
    let bus = Bus::connect(serve.url()).await.unwrap();
    let q = bus.queue("one");
    q.attach(AttachOptions::default()).await.unwrap();
    q.push_batch(["a", "b", "c"]).await.unwrap();
    let mut consumer = q.consume(ConsumeOptions::default().max(3)).await.unwrap();
    for _ in 0..3 {
        consumer.next().await.unwrap().unwrap();
    }
    let metrics = until_value(metrics_addr, r#"busmq_queue_depth{queue="one"}"#, 0.0).await;
    assert_eq!(
        value(&metrics, r#"busmq_messages_pushed_total{queue="one"}"#),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        value(
            &metrics,
            r#"busmq_messages_delivered_total{queue="one",mode="unreliable"}"#
        ),
        Some(3.0),
        "{metrics}"
    );
    assert!(
        value(
            &metrics,
            r#"busmq_store_commit_duration_seconds_count{backend="embedded"}"#
        )
        .is_some_and(|c| c >= 1.0),
        "the in-process store's commits are on the same endpoint:\n{metrics}"
    );
}

#[tokio::test]
async fn metrics_off_opens_no_port() {
    // The environment names a port; the flag turns metrics off anyway.
    let (builder, unused) = Process::builder("busmq-broker").metrics();
    let listen = builder.listen_addr().to_string();
    let broker = builder
        .args(["--listen", &listen, "--storage", "memory"])
        .args(["--metrics-listen", "off"])
        .spawn();
    broker.wait_ready().await;
    let bus = Bus::connect(broker.url()).await.unwrap();
    bus.queue("quiet")
        .attach(AttachOptions::default())
        .await
        .unwrap();
    let refused = tokio::net::TcpStream::connect(unused).await;
    assert!(
        refused.is_err(),
        "nothing listens on {unused} with metrics off"
    );
    assert!(!broker.log().contains("metrics on"), "{}", broker.log());
}

#[tokio::test]
async fn the_admin_port_answers_bad_requests_and_keeps_serving() {
    let (_storage, storage_metrics, _broker, broker_metrics) = split("memory", &[]).await;
    for addr in [broker_metrics, storage_metrics] {
        assert_eq!(get(addr, "/").await.0, 404);
        assert_eq!(get(addr, "/metrics/extra").await.0, 404);
        assert_eq!(get(addr, "/../../etc/passwd").await.0, 404);
        let (status, _) = http(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: busmq\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 405);
        let (status, _) = http(addr, "NOT HTTP AT ALL\r\n\r\n").await;
        assert_eq!(status, 400);
        let body = scrape(addr).await;
        assert!(body.contains("process_start_time_seconds"), "{body}");
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let builder = Process::builder("busmq-broker").env("BUSMQ_LOG_FORMAT", "json");
    let listen = builder.listen_addr().to_string();
    let broker = builder
        .args(["--listen", &listen, "--storage", "memory"])
        .spawn();
    broker.wait_ready().await;
    // The start line follows the bind that wait_ready sees.
    let deadline = tokio::time::Instant::now() + SHOW_TIMEOUT;
    let log = loop {
        let log = broker.log();
        if log.contains("busmq-broker serving") {
            break log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no start line:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lines: Vec<&str> = log.lines().collect();
    for line in &lines {
        let entry: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{line:?} is not one JSON object: {e}"));
        assert!(entry["level"].is_string(), "{line}");
        assert!(entry["timestamp"].is_string(), "{line}");
    }
    assert!(
        lines.iter().any(
            |l| l.contains(r#""message":"busmq-broker serving busmq.v1""#)
                && l.contains(&format!(r#""listen":"{listen}""#))
        ),
        "the start line with its fields:\n{log}"
    );
}

/// Every `busmq_` series the Grafana dashboard queries is one that
/// docs/metrics.md documents, so a renamed series cannot leave a panel
/// silently empty.
#[test]
fn the_dashboard_queries_documented_series() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/busmq.json")).unwrap();
    let docs = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("busmq_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                let series = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name)
                    .to_owned();
                queried.push(series);
            }
        }
    }
    assert!(queried.len() > 10, "{queried:?}");
    for series in queried {
        assert!(
            docs.contains(&format!("`{series}`")),
            "{series} is on the dashboard but not in docs/metrics.md"
        );
    }
}
