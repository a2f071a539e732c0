//! The gateway's bearer-token authentication and its Prometheus series,
//! over real processes (`busmq serve` and `busmq-http`).

mod common;

use busmq_testkit::{Process, scrape};
use common::*;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const TOKEN: &str = "s3cret-token";

#[tokio::test]
async fn a_token_is_needed_for_every_route_but_the_probes() {
    let s = stack(&["--token", TOKEN, "--max-body-bytes", "1000"]).await;
    let http = Client::new();

    // No token, a wrong one, another scheme: 401 with a JSON error and the
    // challenge, whatever the route (an unknown one too: nothing is told
    // about what exists).
    for (path, auth) in [
        ("/message/next", None),
        ("/message/next", Some("Bearer wrong")),
        ("/message/next", Some(format!("Basic {TOKEN}").as_str())),
        ("/queues/q/message/next", Some(TOKEN)),
        ("/no/such/route", None),
        ("/metrics", None),
    ] {
        let mut request = http.get(s.url(path));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{path} {auth:?}"
        );
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"busmq\""
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "UNAUTHORIZED", "{body}");
    }

    // Refused before the body is read: an oversize body without the token
    // is a 401, not a 413. (Small enough to fit the socket's buffers: the
    // gateway answers without reading it.)
    let response = http
        .post(s.url("/message/new"))
        .header("content-type", "application/json")
        .body(vec![b' '; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // The probes stay open.
    for path in ["/healthz", "/readyz"] {
        let response = http.get(s.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }

    // With the token, the API works; nothing refused above was pushed.
    let bearer = format!("Bearer {TOKEN}");
    let response = http
        .post(s.url("/message/new"))
        .header("authorization", &bearer)
        .json(&json!({ "payload": "authorized" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({ "id": 1 }));
    let next: Value = http
        .get(s.url("/message/next"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(next["payload"], "authorized");
}

#[tokio::test]
async fn requests_are_counted_by_route_template_and_status() {
    let broker = broker().await;
    let (builder, metrics) = Process::builder("busmq-http").metrics();
    let listen = builder.listen_addr().to_string();
    let gateway = builder
        .args(["--listen", &listen, "--server", &broker.url()])
        .spawn();
    gateway.wait_ready().await;
    let s = Stack {
        broker,
        gateway,
        http: Client::new(),
    };

    for queue in ["a", "b", "c"] {
        let path = format!("/queues/{queue}/message/new");
        let response = s.post_json(&path, &json!({ "payload": queue })).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    assert_eq!(s.get("/nowhere").await.status(), StatusCode::NOT_FOUND);
    let bad = s.post_raw("/message/new", Some("application/json"), b"{".to_vec());
    assert_eq!(bad.await.status(), StatusCode::BAD_REQUEST);

    let text = scrape::scrape(metrics).await;
    let created = r#"busmq_http_requests_total{route="/queues/{name}/message/new",method="POST",status="201"}"#;
    assert_eq!(scrape::value(&text, created), Some(3.0), "{text}");
    let unmatched = r#"busmq_http_requests_total{route="unmatched",method="GET",status="404"}"#;
    assert_eq!(scrape::value(&text, unmatched), Some(1.0), "{text}");
    let malformed = r#"busmq_http_requests_total{route="/message/new",method="POST",status="400"}"#;
    assert_eq!(scrape::value(&text, malformed), Some(1.0), "{text}");
    // One label per route template, never per queue.
    assert!(!text.contains("/queues/a/"), "{text}");
    assert!(
        text.contains("busmq_http_request_duration_seconds_bucket"),
        "{text}"
    );

    // The same exposition on the gateway's own port.
    let response = s.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    let own = response.text().await.unwrap();
    assert!(own.contains("busmq_http_requests_total"), "{own}");
}

#[tokio::test]
async fn metrics_on_the_gateway_port_say_when_they_are_off() {
    let s = stack(&[]).await;
    let (status, body) = status_json(s.get("/metrics").await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["code"], "METRICS_OFF");
}
