//! The `/v1` REST API over real processes: one `busmq serve` (memory store)
//! and one `busmq-http` in front of it, driven over HTTP, Server-Sent
//! Events and a WebSocket.
//!
//! `busmq` must be built first (`cargo build --workspace --bins`); cargo
//! builds `busmq-http` itself before these tests.

mod common;

use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;

/// `POST /v1/queues/{queue}/messages` with `body`, expecting 201; the answer.
async fn push(s: &Stack, queue: &str, body: Value) -> Value {
    let r = s
        .post_json(&format!("/v1/queues/{queue}/messages"), &body)
        .await;
    let (status, body) = status_json(r).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// `GET /v1/queues/{queue}/messages{query}`, expecting 200; the messages.
async fn consume(s: &Stack, queue: &str, query: &str) -> Vec<Value> {
    let r = s.get(&format!("/v1/queues/{queue}/messages{query}")).await;
    let (status, body) = status_json(r).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["messages"].as_array().expect("messages").clone()
}

fn ids(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|m| m["id"].as_u64().unwrap()).collect()
}

async fn ok_json(r: reqwest::Response) -> Value {
    let (status, body) = status_json(r).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn stats(s: &Stack, queue: &str) -> Value {
    ok_json(s.get(&format!("/v1/queues/{queue}")).await).await
}

#[tokio::test]
async fn pushes_one_or_a_batch_and_consumes_unreliably() {
    let s = stack(&[]).await;
    let one = push(&s, "q", json!({ "payload": { "n": 1 } })).await;
    assert_eq!(one, json!({ "ids": [1], "first_id": 1, "count": 1 }));
    let batch = push(&s, "q", json!({ "messages": ["two", 3, null] })).await;
    assert_eq!(
        batch,
        json!({ "ids": [2, 3, 4], "first_id": 2, "count": 3 })
    );
    // A raw text body is one string message; raw bytes are stored as they are.
    let r = s
        .post_raw(
            "/v1/queues/q/messages",
            Some("text/plain"),
            b"plain".to_vec(),
        )
        .await;
    assert_eq!(status_json(r).await.1["first_id"], 5);
    let r = s
        .post_raw(
            "/v1/queues/q/messages",
            Some("application/octet-stream"),
            br#"{"raw":true}"#.to_vec(),
        )
        .await;
    assert_eq!(status_json(r).await.1["first_id"], 6);
    let r = s
        .post_form("/v1/queues/q/messages", &[("payload", "form")])
        .await;
    assert_eq!(status_json(r).await.1["first_id"], 7);

    let got = consume(&s, "q", "?mode=unreliable&max=3").await;
    assert_eq!(ids(&got), [1, 2, 3]);
    assert_eq!(got[0]["payload"], json!({ "n": 1 }));
    assert_eq!(got[1]["payload"], "two");
    assert_eq!(got[2]["attempt"], 0);
    let got = consume(&s, "q", "?mode=unreliable&max=100").await;
    assert_eq!(ids(&got), [4, 5, 6, 7]);
    assert_eq!(got[0]["payload"], Value::Null);
    assert_eq!(got[1]["payload"], "plain");
    assert_eq!(got[2]["payload"], json!({ "raw": true }));
    assert_eq!(got[3]["payload"], "form");
    // Empty: 200 with no message, at once without a wait.
    assert!(consume(&s, "q", "?mode=unreliable").await.is_empty());
    let info = stats(&s, "q").await;
    assert_eq!(info["count"], 0, "{info}");
    assert_eq!(info["pushed"], 7, "{info}");
    assert_eq!(info["consumed"], 7, "{info}");
    assert_eq!(info["next_id"], 8, "{info}");
}

#[tokio::test]
async fn lease_mode_acks_and_nacks_by_id_or_attempt() {
    let s = stack(&[]).await;
    push(&s, "jobs", json!({ "messages": ["a", "b", "c"] })).await;
    let got = consume(&s, "jobs", "?max=2").await; // lease is the default
    assert_eq!(ids(&got), [1, 2]);
    assert_eq!(got[0]["attempt"], 1);
    let info = stats(&s, "jobs").await;
    assert_eq!(info["leased"], 2, "{info}");
    assert_eq!(info["count"], 3, "{info}");

    // An ack by id alone, from the lease book.
    let acked = ok_json(s.post("/v1/queues/jobs/messages/1/ack").await).await;
    assert_eq!(acked, json!({ "id": 1, "removed": 1 }));
    // Acked already: no lease.
    let r = s.post("/v1/queues/jobs/messages/1/ack").await;
    assert_error(r, StatusCode::NOT_FOUND, "LEASE_NOT_FOUND").await;
    // A wrong attempt is refused by the broker.
    let r = s.post("/v1/queues/jobs/messages/2/ack?attempt=5").await;
    assert_error(r, StatusCode::NOT_FOUND, "LEASE_NOT_FOUND").await;
    // A nack gives 2 back to the front, delivered again with attempt 2.
    let nacked = ok_json(s.post("/v1/queues/jobs/messages/2/nack?attempt=1").await).await;
    assert_eq!(nacked, json!({ "id": 2, "dead_lettered": false }));
    let got = consume(&s, "jobs", "?mode=lease&max=5&visibility=30").await;
    assert_eq!(ids(&got), [2, 3]);
    assert_eq!(got[0]["attempt"], 2);
    assert_eq!(got[0]["payload"], "b");
    // Everything is leased: nothing more to take.
    assert!(consume(&s, "jobs", "?mode=lease").await.is_empty());
    for (id, attempt) in [(2, 2), (3, 1)] {
        let path = format!("/v1/queues/jobs/messages/{id}/ack?attempt={attempt}");
        ok_json(s.post(&path).await).await;
    }
    let info = stats(&s, "jobs").await;
    assert_eq!(
        (info["count"].as_u64(), info["leased"].as_u64()),
        (Some(0), Some(0))
    );

    // A short lease runs out and the message comes back.
    push(&s, "short", json!({ "payload": "x" })).await;
    let got = consume(&s, "short", "?visibility=0.2").await;
    assert_eq!(got[0]["attempt"], 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let got = consume(&s, "short", "?wait=2").await;
    assert_eq!(
        (got[0]["id"].as_u64(), got[0]["attempt"].as_u64()),
        (Some(1), Some(2))
    );
}

#[tokio::test]
async fn reliable_mode_acks_cumulatively_and_redelivers_what_was_not_acked() {
    let s = stack(&[]).await;
    push(&s, "r", json!({ "messages": [1, 2, 3, 4] })).await;
    let got = consume(&s, "r", "?mode=reliable&max=2").await;
    assert_eq!(ids(&got), [1, 2]);
    assert_eq!(stats(&s, "r").await["pending"], 2);
    let acked = ok_json(s.post("/v1/queues/r/messages/1/ack?mode=reliable").await).await;
    assert_eq!(acked, json!({ "id": 1, "removed": 1 }));
    // 2 was not acked: the next reliable consumer gets it again.
    let got = consume(&s, "r", "?mode=reliable&max=10").await;
    assert_eq!(ids(&got), [2, 3, 4]);
    let acked = ok_json(s.post("/v1/queues/r/messages/4/ack?mode=reliable").await).await;
    assert_eq!(acked["removed"], 3);
    assert_eq!(stats(&s, "r").await["count"], 0);
}

#[tokio::test]
async fn persistent_mode_reads_from_an_index_and_removes_nothing() {
    let s = stack(&[]).await;
    push(&s, "log", json!({ "messages": ["a", "b", "c"] })).await;
    let got = consume(&s, "log", "?mode=persistent&from=2&max=10").await;
    assert_eq!(ids(&got), [2, 3]);
    let got = consume(&s, "log", "?mode=persistent&max=10").await;
    assert_eq!(ids(&got), [1, 2, 3]);
    assert_eq!(got[2]["payload"], "c");
    assert!(
        consume(&s, "log", "?mode=persistent&from=4")
            .await
            .is_empty()
    );
    assert_eq!(stats(&s, "log").await["count"], 3);
}

#[tokio::test]
async fn a_long_poll_answers_with_the_message_another_client_pushes() {
    let s = stack(&[]).await;
    push(&s, "w", json!({ "payload": 0 })).await;
    consume(&s, "w", "?mode=unreliable").await;
    let poll = async {
        let started = std::time::Instant::now();
        let got = consume(&s, "w", "?mode=unreliable&wait=10&max=5").await;
        (got, started.elapsed())
    };
    let pusher = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        push(&s, "w", json!({ "payload": "late" })).await;
    };
    let ((got, waited), ()) = tokio::join!(poll, pusher);
    assert_eq!(got[0]["payload"], "late");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test]
async fn stats_flush_and_delete() {
    let s = stack(&[]).await;
    push(&s, "st", json!({ "messages": [1, 2, 3, 4, 5] })).await;
    let info = stats(&s, "st").await;
    for (field, value) in [
        ("name", json!("st")),
        ("count", json!(5)),
        ("pending", json!(0)),
        ("leased", json!(0)),
        ("pushed", json!(5)),
        ("consumed", json!(0)),
        ("next_id", json!(6)),
        ("max_deliveries", json!(0)),
        ("reliable_consumer", json!(false)),
    ] {
        assert_eq!(info[field], value, "{field}: {info}");
    }
    assert!(info["attachments"].as_u64().unwrap() >= 1, "{info}");
    assert!(info["ttl"].as_f64().unwrap() > 0.0, "{info}");

    let flushed = ok_json(s.post("/v1/queues/st/flush").await).await;
    assert_eq!(flushed, json!({ "flushed": 5 }));
    assert_eq!(stats(&s, "st").await["count"], 0);
    assert_eq!(stats(&s, "st").await["next_id"], 6, "the id counter stays");

    let deleted = ok_json(s.send(Method::DELETE, "/v1/queues/st").await).await;
    assert_eq!(deleted, json!({ "deleted": true }));
    let r = s.get("/v1/queues/st").await;
    assert_error(r, StatusCode::NOT_FOUND, "QUEUE_NOT_FOUND").await;
    let deleted = ok_json(s.send(Method::DELETE, "/v1/queues/st").await).await;
    assert_eq!(deleted, json!({ "deleted": false }));
    // A push creates it anew.
    assert_eq!(push(&s, "st", json!({ "payload": 1 })).await["first_id"], 1);
    // Stats never create a queue.
    let r = s.get("/v1/queues/never-used").await;
    assert_error(r, StatusCode::NOT_FOUND, "QUEUE_NOT_FOUND").await;
}

/// Reads the SSE body until an event named `name`; its data.
async fn next_event(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buffer: &mut String,
    name: &str,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let mut kind = "message";
            let mut data = String::new();
            for line in event.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if kind == name {
                return data;
            }
        }
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no {name} event within 10 s"))
            .expect("the stream goes on")
            .expect("a chunk");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn an_sse_subscriber_receives_each_publication() {
    let s = stack(&[]).await;
    let r = s
        .post_json("/v1/pubsub/news", &json!({ "payload": "nobody" }))
        .await;
    assert_eq!(ok_json(r).await, json!({ "receivers": 0 }));

    let events = s.get("/v1/pubsub/news/events").await;
    assert_eq!(events.status(), StatusCode::OK);
    assert_eq!(
        events.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut stream = events.bytes_stream();
    let mut buffer = String::new();
    next_event(&mut stream, &mut buffer, "subscribed").await;
    for payload in [json!({ "headline": "hi" }), json!("two")] {
        let r = s
            .post_json("/v1/pubsub/news", &json!({ "payload": payload }))
            .await;
        assert_eq!(ok_json(r).await, json!({ "receivers": 1 }));
        let data = next_event(&mut stream, &mut buffer, "message").await;
        assert_eq!(serde_json::from_str::<Value>(&data).unwrap(), payload);
    }
    // A batch is no publication.
    let r = s
        .post_json("/v1/pubsub/news", &json!({ "messages": [1, 2] }))
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, "INVALID_BODY").await;
    // The client going away ends the subscription.
    drop(stream);
    let mut receivers = 1;
    for _ in 0..50 {
        let r = s
            .post_json("/v1/pubsub/news", &json!({ "payload": 1 }))
            .await;
        receivers = ok_json(r).await["receivers"].as_u64().unwrap();
        if receivers == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(receivers, 0, "the subscription of a gone client ends");
}

#[tokio::test]
async fn persistables_put_patch_and_get() {
    let s = stack(&[]).await;
    let r = s.get("/v1/objects/user.1").await;
    assert_error(r, StatusCode::NOT_FOUND, "OBJECT_NOT_FOUND").await;
    let put = json!({ "name": "ada", "visits": 1 });
    let r = s.send_json(Method::PUT, "/v1/objects/user.1", &put).await;
    assert_eq!(ok_json(r).await, put);
    assert_eq!(ok_json(s.get("/v1/objects/user.1").await).await, put);
    let patch = json!({ "visits": 2, "tags": ["x"] });
    let r = s
        .send_json(Method::PATCH, "/v1/objects/user.1", &patch)
        .await;
    let merged = json!({ "name": "ada", "visits": 2, "tags": ["x"] });
    assert_eq!(ok_json(r).await, merged);
    assert_eq!(ok_json(s.get("/v1/objects/user.1").await).await, merged);
    // A PUT replaces: the fields it leaves out become null.
    let r = s
        .send_json(Method::PUT, "/v1/objects/user.1", &json!({ "visits": 3 }))
        .await;
    let replaced = json!({ "name": null, "visits": 3, "tags": null });
    assert_eq!(ok_json(r).await, replaced);
    assert_eq!(ok_json(s.get("/v1/objects/user.1").await).await, replaced);
    // Not an object; not JSON.
    let r = s
        .send_json(Method::PUT, "/v1/objects/user.1", &json!([1]))
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, "INVALID_BODY").await;
    let r = s
        .http
        .patch(s.url("/v1/objects/user.1"))
        .header("content-type", "text/plain")
        .body("visits=4")
        .send()
        .await
        .unwrap();
    assert_unsupported_media_type(r).await;
    let r = s
        .send_json(Method::PUT, "/v1/objects/user.1?ttl=0", &json!({}))
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, "BAD_PARAMETER").await;
    // With a ttl, an object expires after it.
    let r = s
        .send_json(Method::PUT, "/v1/objects/session?ttl=1", &json!({ "a": 1 }))
        .await;
    ok_json(r).await;
    assert_eq!(
        ok_json(s.get("/v1/objects/session").await).await,
        json!({ "a": 1 })
    );
    let mut gone = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if s.get("/v1/objects/session").await.status() == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
    }
    assert!(gone, "an object written with ttl=1 expires");
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Socket, frame: Value) {
    ws.send(Frame::text(frame.to_string())).await.unwrap();
}

/// The next JSON frame of `ws`, within 5 s.
async fn recv(ws: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("the socket is open")
            .expect("a frame");
        if let Frame::Text(text) = frame {
            return serde_json::from_str(text.as_str()).expect("a JSON frame");
        }
    }
}

/// The next two frames of `ws`, sorted by event name (an answer and a
/// message may come in either order).
async fn recv_two(ws: &mut Socket) -> Vec<Value> {
    let mut got = vec![recv(ws).await, recv(ws).await];
    got.sort_by_key(|f| f["event"].as_str().unwrap_or_default().to_owned());
    got
}

/// True when no frame arrives within `within`.
async fn quiet(ws: &mut Socket, within: Duration) -> bool {
    tokio::time::timeout(within, ws.next()).await.is_err()
}

#[tokio::test]
async fn a_websocket_pushes_consumes_and_acks_on_one_socket() {
    let s = stack(&[]).await;
    let url = format!("ws://{}/v1/ws", s.gateway.addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");

    send(
        &mut ws,
        json!({ "op": "push", "queue": "wq", "payload": { "n": 1 }, "ref": 7 }),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        json!({ "event": "pushed", "queue": "wq", "id": 1, "count": 1, "ref": 7 })
    );
    send(
        &mut ws,
        json!({ "op": "push", "queue": "wq", "messages": ["b", "c"], "ref": "x" }),
    )
    .await;
    let pushed = recv(&mut ws).await;
    assert_eq!(
        (pushed["id"].as_u64(), pushed["count"].as_u64()),
        (Some(2), Some(2))
    );

    // A bad frame is an error event; the socket stays open.
    ws.send(Frame::text("{not json")).await.unwrap();
    let err = recv(&mut ws).await;
    assert_eq!(
        (err["event"].as_str(), err["code"].as_str()),
        (Some("error"), Some("MALFORMED_JSON"))
    );
    send(&mut ws, json!({ "op": "dance", "ref": 1 })).await;
    let err = recv(&mut ws).await;
    assert_eq!(
        (err["code"].as_str(), err["ref"].as_u64()),
        (Some("INVALID_BODY"), Some(1))
    );
    send(
        &mut ws,
        json!({ "op": "push", "queue": "bad name", "payload": 1 }),
    )
    .await;
    assert_eq!(recv(&mut ws).await["code"], "INVALID_NAME");

    // One message in flight at a time: the next comes after the ack.
    send(
        &mut ws,
        json!({ "op": "consume", "queue": "wq", "mode": "lease", "max_inflight": 1, "ref": 2 }),
    )
    .await;
    let consuming = recv(&mut ws).await;
    assert_eq!(
        (consuming["event"].as_str(), consuming["ref"].as_u64()),
        (Some("consuming"), Some(2))
    );
    let first = recv(&mut ws).await;
    assert_eq!(
        first,
        json!({ "event": "message", "queue": "wq", "id": 1, "payload": { "n": 1 }, "attempt": 1 })
    );
    assert!(
        quiet(&mut ws, Duration::from_millis(500)).await,
        "max_inflight holds the next one"
    );
    send(
        &mut ws,
        json!({ "op": "ack", "queue": "wq", "id": 1, "ref": 3 }),
    )
    .await;
    let got = recv_two(&mut ws).await;
    assert_eq!(got[0]["event"], "acked", "{got:?}");
    assert_eq!(got[0]["ref"], 3);
    assert_eq!(
        (got[1]["event"].as_str(), got[1]["id"].as_u64()),
        (Some("message"), Some(2))
    );
    // A nack puts 2 back at the front. 3 was on its way already (the
    // broker's prefetch window is max_inflight), so it comes first; 2 comes
    // again, with the next attempt, once 3 is acked.
    send(&mut ws, json!({ "op": "nack", "queue": "wq", "id": 2 })).await;
    let got = recv_two(&mut ws).await;
    assert_eq!(got[1]["event"], "nacked", "{got:?}");
    assert_eq!(
        (got[0]["id"].as_u64(), got[0]["attempt"].as_u64()),
        (Some(3), Some(1))
    );
    // Acking what this socket does not hold is an error event.
    send(&mut ws, json!({ "op": "ack", "queue": "wq", "id": 99 })).await;
    assert_eq!(recv(&mut ws).await["code"], "LEASE_NOT_FOUND");
    send(&mut ws, json!({ "op": "ack", "queue": "wq", "id": 3 })).await;
    let got = recv_two(&mut ws).await;
    assert_eq!(got[0]["event"], "acked", "{got:?}");
    assert_eq!(
        (got[1]["id"].as_u64(), got[1]["attempt"].as_u64()),
        (Some(2), Some(2))
    );
    send(&mut ws, json!({ "op": "ack", "queue": "wq", "id": 2 })).await;
    assert_eq!(recv(&mut ws).await["event"], "acked");
    send(&mut ws, json!({ "op": "stop", "queue": "wq" })).await;
    assert_eq!(recv(&mut ws).await["event"], "stopped");
    ws.close(None).await.unwrap();

    let info = stats(&s, "wq").await;
    assert_eq!(
        (info["count"].as_u64(), info["leased"].as_u64()),
        (Some(0), Some(0)),
        "{info}"
    );
}

/// Every route of the gateway, as the OpenAPI document must list it.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/message/new"),
    ("get", "/message/next"),
    ("post", "/message/{id}/status/done"),
    ("post", "/queues/{name}/message/new"),
    ("get", "/queues/{name}/message/next"),
    ("post", "/queues/{name}/message/{id}/status/done"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("post", "/v1/queues/{name}/messages"),
    ("get", "/v1/queues/{name}/messages"),
    ("post", "/v1/queues/{name}/messages/{id}/ack"),
    ("post", "/v1/queues/{name}/messages/{id}/nack"),
    ("get", "/v1/queues/{name}"),
    ("delete", "/v1/queues/{name}"),
    ("post", "/v1/queues/{name}/flush"),
    ("post", "/v1/pubsub/{channel}"),
    ("get", "/v1/pubsub/{channel}/events"),
    ("get", "/v1/objects/{name}"),
    ("put", "/v1/objects/{name}"),
    ("patch", "/v1/objects/{name}"),
    ("get", "/v1/ws"),
    ("get", "/openapi.json"),
];

#[tokio::test]
async fn openapi_json_parses_and_lists_every_route() {
    let s = stack(&[]).await;
    let doc = ok_json(s.get("/openapi.json").await).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().expect("paths");
    for (method, path) in ROUTES {
        let operation = &paths[*path][*method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        let responses = operation["responses"].as_object().unwrap();
        assert!(
            responses.contains_key("503"),
            "{method} {path} documents 503"
        );
    }
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        documented,
        ROUTES.len(),
        "no route documented twice or unlisted"
    );
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(doc["components"]["responses"]["Error"].is_object());
}

#[tokio::test]
async fn v1_bad_input_is_a_json_error_with_the_right_status() {
    let s = stack(&["--max-body-bytes", "4096"]).await;
    let json_type = Some("application/json");
    let r = s
        .post_raw(
            "/v1/queues/q/messages",
            json_type,
            b"{\"payload\": ".to_vec(),
        )
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, "MALFORMED_JSON").await;
    let r = s
        .post_json("/v1/queues/q/messages", &json!({ "pay": 1 }))
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, "MISSING_PAYLOAD").await;
    let r = s
        .post_json("/v1/queues/q/messages", &json!({ "messages": [] }))
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, "INVALID_BODY").await;
    let r = s
        .post_raw(
            "/v1/queues/q/messages",
            Some("application/xml"),
            b"<a/>".to_vec(),
        )
        .await;
    assert_unsupported_media_type(r).await;
    let r = s
        .post_raw("/v1/queues/q/messages", None, b"x".to_vec())
        .await;
    assert_unsupported_media_type(r).await;
    let big = json!({ "payload": "x".repeat(8192) });
    for path in ["/v1/queues/q/messages", "/v1/pubsub/c"] {
        let r = s.post_json(path, &big).await;
        assert_error(r, StatusCode::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE").await;
    }
    let r = s.send_json(Method::PUT, "/v1/objects/o", &big).await;
    assert_error(r, StatusCode::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE").await;
    for name in ["bad%20name", "a$b", &"q".repeat(300)] {
        let r = s
            .post_json(
                &format!("/v1/queues/{name}/messages"),
                &json!({ "payload": 1 }),
            )
            .await;
        assert_error(r, StatusCode::BAD_REQUEST, "INVALID_NAME").await;
        for (method, path) in [
            (Method::GET, format!("/v1/queues/{name}/messages")),
            (Method::GET, format!("/v1/queues/{name}")),
            (Method::POST, format!("/v1/queues/{name}/flush")),
            (Method::DELETE, format!("/v1/queues/{name}")),
            (Method::POST, format!("/v1/queues/{name}/messages/1/ack")),
            (Method::POST, format!("/v1/queues/{name}/messages/1/nack")),
            (
                Method::POST,
                format!("/v1/queues/{name}/messages/1/ack?mode=reliable"),
            ),
            (Method::GET, format!("/v1/objects/{name}")),
            (Method::GET, format!("/v1/pubsub/{name}/events")),
        ] {
            let r = s.send(method.clone(), &path).await;
            let body = assert_error(r, StatusCode::BAD_REQUEST, "INVALID_NAME").await;
            assert!(!body.is_null(), "{method} {path}");
        }
        let r = s
            .post_json(&format!("/v1/pubsub/{name}"), &json!({ "payload": 1 }))
            .await;
        assert_error(r, StatusCode::BAD_REQUEST, "INVALID_NAME").await;
    }
    for id in ["abc", "0", "-1", "1.5", "99999999999999999999999"] {
        for op in ["ack", "nack"] {
            let r = s.post(&format!("/v1/queues/q/messages/{id}/{op}")).await;
            assert_error(r, StatusCode::BAD_REQUEST, "BAD_PARAMETER").await;
        }
    }
    for query in [
        "mode=fast",
        "max=0",
        "max=1001",
        "max=x",
        "wait=-1",
        "visibility=0",
        "visibility=1e300",
        "mode=persistent&from=-1",
        "mode=reliable&last=x",
    ] {
        let r = s.get(&format!("/v1/queues/q/messages?{query}")).await;
        assert_error(r, StatusCode::BAD_REQUEST, "BAD_PARAMETER").await;
    }
    for query in ["mode=other", "attempt=0"] {
        let r = s
            .post(&format!("/v1/queues/q/messages/1/ack?{query}"))
            .await;
        assert_error(r, StatusCode::BAD_REQUEST, "BAD_PARAMETER").await;
    }
    let r = s
        .send_json(Method::PUT, "/v1/objects/o?ttl=1e300", &json!({}))
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, "BAD_PARAMETER").await;
    for path in ["/v1", "/v1/queues", "/v1/queues/q/other", "/v1/nothing"] {
        let r = s.get(path).await;
        assert_error(r, StatusCode::NOT_FOUND, "NO_ROUTE").await;
    }
    for (method, path) in [
        (Method::PUT, "/v1/queues/q/messages"),
        (Method::POST, "/v1/queues/q"),
        (Method::GET, "/v1/queues/q/flush"),
        (Method::DELETE, "/v1/objects/o"),
        (Method::POST, "/openapi.json"),
    ] {
        let r = s.send(method, path).await;
        assert_error(r, StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED").await;
    }
    let r = s.get("/v1/ws").await;
    assert_error(r, StatusCode::UPGRADE_REQUIRED, "UPGRADE_REQUIRED").await;
    // Nothing above stored a message.
    let r = s.get("/v1/queues/q").await;
    assert_error(r, StatusCode::NOT_FOUND, "QUEUE_NOT_FOUND").await;
}

#[tokio::test]
async fn v1_answers_503_while_the_broker_is_down_and_recovers() {
    let s = stack(&[]).await;
    push(&s, "q", json!({ "payload": "before" })).await;
    s.broker.kill9();
    let one = json!({ "payload": 1 });
    for r in [
        s.post_json("/v1/queues/q/messages", &one).await,
        s.get("/v1/queues/q/messages").await,
        s.get("/v1/queues/q/messages?mode=reliable&wait=1").await,
        s.get("/v1/queues/q").await,
        s.post("/v1/queues/q/flush").await,
        s.send(Method::DELETE, "/v1/queues/q").await,
        s.post("/v1/queues/q/messages/1/ack?attempt=1").await,
        s.post("/v1/queues/q/messages/1/ack?mode=reliable").await,
        s.post_json("/v1/pubsub/c", &one).await,
        s.get("/v1/pubsub/c/events").await,
        s.get("/v1/objects/o").await,
        s.send_json(Method::PUT, "/v1/objects/o", &json!({})).await,
    ] {
        assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "BROKER_UNAVAILABLE").await;
    }
    // The document does not need the broker.
    ok_json(s.get("/openapi.json").await).await;

    s.broker.restart().await;
    eventually(&s, "/readyz", StatusCode::OK).await;
    assert_eq!(
        push(&s, "q", json!({ "payload": "after" })).await["first_id"],
        1
    );
    let got = consume(&s, "q", "?mode=unreliable").await;
    assert_eq!(got[0]["payload"], "after");
}
