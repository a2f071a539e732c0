//! `busmq serve` runs the HTTP gateway in its own process: one command
//! gives the whole bus, and what is pushed over HTTP is the same queue a
//! gRPC client consumes.

use busmq_client::{AttachOptions, Bus, ConsumeOptions};
use busmq_testkit::Process;
use futures::StreamExt;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn busmq_serve_answers_http_over_its_own_broker() {
    let http_addr = busmq_testkit::free_addr();
    let (builder, _) = Process::builder("busmq").serve("embedded");
    let serve = builder
        .args(["--http-listen", &http_addr.to_string()])
        .args(["--visibility-timeout", "5"])
        .spawn();
    serve.wait_ready().await;
    let http = Client::new();
    let url = |path: &str| format!("http://{http_addr}{path}");

    // Ready as soon as its own broker is: the gateway in the same process
    // reaches it over loopback.
    let mut ready = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        if let Ok(r) = http.get(url("/readyz")).send().await {
            ready = r.status();
            if ready == StatusCode::OK {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(ready, StatusCode::OK);

    for n in 1..=3 {
        let response = http
            .post(url("/queues/mixed/message/new"))
            .json(&json!({ "payload": { "n": n } }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.json::<Value>().await.unwrap(), json!({ "id": n }));
    }

    let bus = Bus::connect(serve.url()).await.unwrap();
    let queue = bus.queue("mixed");
    queue.attach(AttachOptions::default()).await.unwrap();
    let mut consumer = queue.consume(ConsumeOptions::default()).await.unwrap();
    for n in 1..=3u64 {
        let delivery = consumer.next().await.expect("a delivery").unwrap();
        assert_eq!(delivery.id, n);
        let payload: Value = serde_json::from_slice(&delivery.payload).unwrap();
        assert_eq!(payload, json!({ "n": n }));
    }
}
