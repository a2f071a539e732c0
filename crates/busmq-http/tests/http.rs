//! The message-queue HTTP API over real processes: one `busmq serve`
//! (memory store) and one `busmq-http` in front of it, driven over HTTP.
//!
//! `busmq` must be built first (`cargo build --workspace --bins`); cargo
//! builds `busmq-http` itself before these tests.

mod common;

use std::time::Duration;

use busmq_testkit::Process;
use common::*;
use reqwest::{Client, Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn the_seed_flow_line_by_line() {
    let s = stack(&[]).await;
    // curl -X POST -d 'payload=yada yada yada' localhost:3000/message/new
    let (status, body) = status_json(
        s.post_form("/message/new", &[("payload", "yada yada yada")])
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, json!({ "id": 1 }));
    // curl localhost:3000/message/next
    let (status, body) = status_json(s.get("/message/next").await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], 1);
    assert_eq!(body["payload"], "yada yada yada");
    assert_eq!(body["attempt"], 1);
    // Leased: nobody else gets it meanwhile.
    assert_eq!(s.next_status("").await, StatusCode::NO_CONTENT);
    // curl -X POST localhost:3000/message/1/status/done
    let (status, body) = s.done("", 1, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "id": 1 }));
    // Done means removed: not served again, and a second done is 404.
    assert_eq!(s.next_status("").await, StatusCode::NO_CONTENT);
    let (status, body) = s.done("", 1, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "LEASE_NOT_FOUND");
}

#[tokio::test]
async fn json_and_form_payloads_round_trip_in_order() {
    let s = stack(&[]).await;
    let payloads = [
        json!("plain text"),
        json!("42"),
        json!(42),
        json!(-1.5),
        json!(true),
        json!(null),
        json!({ "order": 7, "items": ["a", "b"] }),
        json!([1, "two", { "three": 3 }]),
    ];
    for p in &payloads {
        s.push("", p.clone()).await;
    }
    let (status, body) =
        status_json(s.post_form("/message/new", &[("payload", "a=b&c")]).await).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["id"], payloads.len() + 1);
    let form = s
        .post_raw(
            "/message/new",
            Some("application/json; charset=utf-8"),
            br#"{"payload": "with charset"}"#.to_vec(),
        )
        .await;
    assert_eq!(form.status(), StatusCode::CREATED);
    for (i, p) in payloads.iter().enumerate() {
        let m = s.next("", "").await;
        assert_eq!(m["id"], i as u64 + 1);
        assert_eq!(&m["payload"], p, "message {}", i + 1);
    }
    assert_eq!(s.next("", "").await["payload"], "a=b&c");
    assert_eq!(s.next("", "").await["payload"], "with charset");
    assert_eq!(s.next_status("").await, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_long_poll_answers_with_the_message_another_client_pushes() {
    let s = stack(&[]).await;
    // An empty queue and a bounded wait: 204 after it.
    let r = s.get("/message/next?wait=0.2").await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let url = s.url("/message/next?wait=15");
    let poll = tokio::spawn(async move {
        let r = Client::new().get(url).send().await.expect("answer");
        status_json(r).await
    });
    // Give the poll time to reach the broker; it must still be waiting,
    // since the queue is empty.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "the poll answered before any push");
    let producer = Client::new();
    let r = producer
        .post(s.url("/message/new"))
        .json(&json!({ "payload": "wake up" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (status, body) = poll.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], 1);
    assert_eq!(body["payload"], "wake up");
    // The long poll leased it like any next.
    let (status, _) = s.done("", 1, "").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn an_expired_lease_goes_back_to_the_front_for_another_consumer() {
    expired_lease_goes_back_to_the_front(stack(&["--visibility-timeout", "1"]).await).await;
}

#[tokio::test]
async fn an_expired_lease_goes_back_to_the_front_on_the_embedded_store() {
    let broker = broker_on("embedded").await;
    let gateway = gateway_for(&broker, &["--visibility-timeout", "1"]).await;
    let s = Stack {
        broker,
        gateway,
        http: Client::new(),
    };
    expired_lease_goes_back_to_the_front(s).await;
}

/// Consumer A takes 1 and lets its lease (1 s) run out; consumer B then
/// gets 1 again, before 2.
async fn expired_lease_goes_back_to_the_front(s: Stack) {
    s.push("", json!("first")).await;
    s.push("", json!("second")).await;
    // Consumer A takes 1 and never marks it done.
    let a = s.next("", "").await;
    assert_eq!(
        (a["id"].as_u64(), a["attempt"].as_u64()),
        (Some(1), Some(1))
    );
    // Let A's lease run out (1 s).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // Consumer B gets 1 again, before 2.
    let b = s.next("", "").await;
    assert_eq!(b["id"], 1, "{b}");
    assert_eq!(b["payload"], "first");
    assert_eq!(b["attempt"], 2);
    let b2 = s.next("", "").await;
    assert_eq!(b2["id"], 2, "{b2}");
    // A's done, naming its delivery, is refused: the message is B's now.
    let (status, body) = s.done("", 1, "?attempt=1").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // B's done removes it.
    let (status, body) = s.done("", 1, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = s.done("", 2, "?attempt=1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.next_status("").await, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn done_of_an_unknown_finished_or_expired_message_is_404() {
    let s = stack(&["--visibility-timeout", "1"]).await;
    // Never pushed.
    let (status, body) = s.done("", 999, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "LEASE_NOT_FOUND");
    let (status, body) = s.done("", 999, "?attempt=1").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Pushed, never taken.
    let id = s.push("", json!("x")).await;
    let (status, _) = s.done("", id, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Taken, then expired with nobody taking it again.
    assert_eq!(s.next("", "").await["id"], id);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (status, body) = s.done("", id, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = s.done("", id, "?attempt=1").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Still in the queue, at the front: served again, then done twice.
    let again = s.next("", "").await;
    assert_eq!(
        (again["id"].as_u64(), again["attempt"].as_u64()),
        (Some(id), Some(2))
    );
    assert_eq!(s.done("", id, "").await.0, StatusCode::OK);
    assert_eq!(s.done("", id, "").await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.done("", id, "?attempt=2").await.0, StatusCode::NOT_FOUND);
    // A done on a queue that does not exist.
    assert_eq!(
        s.done("/queues/nowhere", 1, "?attempt=1").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn named_queues_are_separate_from_the_default_one() {
    let s = stack(&["--default-queue", "jobs"]).await;
    assert_eq!(s.push("/queues/orders.eu", json!("o1")).await, 1);
    assert_eq!(s.push("/queues/orders.eu", json!("o2")).await, 2);
    assert_eq!(s.push("", json!("j1")).await, 1);
    // The default queue is the one --default-queue names.
    assert_eq!(s.push("/queues/jobs", json!("j2")).await, 2);
    let o = s.next("/queues/orders.eu", "").await;
    assert_eq!((o["id"].as_u64(), &o["payload"]), (Some(1), &json!("o1")));
    let j = s.next("", "").await;
    assert_eq!(j["payload"], "j1");
    let j2 = s.next("/queues/jobs", "").await;
    assert_eq!(j2["payload"], "j2");
    // A done names its own queue's message.
    assert_eq!(
        s.done("/queues/other", 1, "").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(s.done("/queues/orders.eu", 1, "").await.0, StatusCode::OK);
    assert_eq!(s.done("", 1, "").await.0, StatusCode::OK);
    assert_eq!(s.done("/queues/jobs", 2, "").await.0, StatusCode::OK);
    assert_eq!(
        s.next("/queues/orders.eu", "?wait=1").await["payload"],
        "o2"
    );
    assert_eq!(s.next_status("/queues/empty").await, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn bad_input_is_a_json_error_with_the_right_status() {
    let s = stack(&["--max-body-bytes", "4096"]).await;
    let json_type = Some("application/json");
    // Malformed JSON.
    let r = s
        .post_raw("/message/new", json_type, b"{\"payload\": ".to_vec())
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, "MALFORMED_JSON").await;
    // No payload, in JSON and in a form.
    let r = s.post_json("/message/new", &json!({ "pay": 1 })).await;
    assert_error(r, StatusCode::BAD_REQUEST, "MISSING_PAYLOAD").await;
    let r = s.post_json("/message/new", &json!(["payload"])).await;
    assert_error(r, StatusCode::BAD_REQUEST, "MISSING_PAYLOAD").await;
    let r = s.post_form("/message/new", &[("other", "x")]).await;
    assert_error(r, StatusCode::BAD_REQUEST, "MISSING_PAYLOAD").await;
    // Wrong or missing content type.
    let r = s
        .post_raw("/message/new", Some("text/plain"), b"payload=x".to_vec())
        .await;
    assert_unsupported_media_type(r).await;
    let r = s
        .post_raw("/message/new", None, b"payload=x".to_vec())
        .await;
    assert_unsupported_media_type(r).await;
    // A body over --max-body-bytes.
    let big = json!({ "payload": "x".repeat(8192) });
    let r = s.post_json("/message/new", &big).await;
    assert_error(r, StatusCode::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE").await;
    // Invalid queue names, as the broker's rules say.
    for name in ["bad%20name", "a$b", &"q".repeat(300)] {
        let r = s
            .post_json(
                &format!("/queues/{name}/message/new"),
                &json!({ "payload": 1 }),
            )
            .await;
        assert_error(r, StatusCode::BAD_REQUEST, "INVALID_NAME").await;
        let r = s.get(&format!("/queues/{name}/message/next")).await;
        assert_error(r, StatusCode::BAD_REQUEST, "INVALID_NAME").await;
        for query in ["", "?attempt=1"] {
            let r = s
                .post(&format!("/queues/{name}/message/1/status/done{query}"))
                .await;
            assert_error(r, StatusCode::BAD_REQUEST, "INVALID_NAME").await;
        }
    }
    // Ids that are not positive integers.
    for id in ["abc", "0", "-1", "1.5", "99999999999999999999999"] {
        let r = s.post(&format!("/message/{id}/status/done")).await;
        assert_error(r, StatusCode::BAD_REQUEST, "BAD_PARAMETER").await;
        let r = s.post(&format!("/queues/q/message/{id}/status/done")).await;
        assert_error(r, StatusCode::BAD_REQUEST, "BAD_PARAMETER").await;
    }
    let r = s.post("/message/1/status/done?attempt=zero").await;
    assert_error(r, StatusCode::BAD_REQUEST, "BAD_PARAMETER").await;
    // A wait that is not a number of seconds.
    for wait in ["abc", "-1", ""] {
        let r = s.get(&format!("/message/next?wait={wait}")).await;
        assert_error(r, StatusCode::BAD_REQUEST, "BAD_PARAMETER").await;
    }
    // Unknown routes and wrong methods.
    for path in [
        "/",
        "/message",
        "/message/1/status/failed",
        "/queues/q/nothing",
    ] {
        let r = s.get(path).await;
        assert_error(r, StatusCode::NOT_FOUND, "NO_ROUTE").await;
    }
    for (method, path) in [
        (Method::GET, "/message/new"),
        (Method::POST, "/message/next"),
        (Method::DELETE, "/message/next"),
        (Method::GET, "/message/1/status/done"),
        (Method::PUT, "/queues/q/message/new"),
        (Method::POST, "/healthz"),
    ] {
        let r = s.send(method.clone(), path).await;
        assert_error(r, StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED").await;
    }
    // Nothing above stored a message.
    assert_eq!(s.next_status("").await, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_message_over_the_broker_limit_is_413() {
    // The body fits the gateway's limit; the broker refuses the message.
    let s = stack(&["--max-body-bytes", "4194304"]).await;
    let big = json!({ "payload": "x".repeat(1_500_000) });
    let r = s.post_json("/message/new", &big).await;
    assert_error(r, StatusCode::PAYLOAD_TOO_LARGE, "MESSAGE_TOO_LARGE").await;
}

#[tokio::test]
async fn a_broker_down_is_503_and_the_gateway_recovers_when_it_returns() {
    let s = stack(&[]).await;
    let (status, body) = status_json(s.get("/readyz").await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.push("", json!("before")).await;

    s.broker.kill9();
    let (status, body) = status_json(s.get("/healthz").await).await;
    assert_eq!(status, StatusCode::OK, "the gateway itself is up: {body}");
    let r = s.get("/readyz").await;
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "BROKER_UNAVAILABLE").await;
    let r = s
        .post_json("/message/new", &json!({ "payload": "during" }))
        .await;
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "BROKER_UNAVAILABLE").await;
    let r = s.get("/message/next").await;
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "BROKER_UNAVAILABLE").await;
    let r = s.get("/message/next?wait=1").await;
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "BROKER_UNAVAILABLE").await;
    let r = s.post("/message/1/status/done?attempt=1").await;
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "BROKER_UNAVAILABLE").await;

    // Back on the same port, with an empty memory store.
    s.broker.restart().await;
    eventually(&s, "/readyz", StatusCode::OK).await;
    // The queue is attached again by itself.
    let id = s.push("", json!("after")).await;
    assert_eq!(id, 1, "a fresh memory store numbers from 1");
    let m = s.next("", "").await;
    assert_eq!(m["payload"], "after");
    assert_eq!(s.done("", 1, "").await.0, StatusCode::OK);
}

#[tokio::test]
async fn readyz_is_503_until_the_broker_is_up() {
    // A gateway started before its broker: up, not ready.
    let broker_addr = busmq_testkit::free_addr();
    let g = Process::builder("busmq-http");
    let listen = g.listen_addr().to_string();
    let gateway = g
        .args(["--listen", &listen])
        .args(["--server", &format!("http://{broker_addr}")])
        .spawn();
    gateway.wait_ready().await;
    let http = Client::new();
    let url = |path: &str| format!("http://{}{path}", gateway.addr());
    let r = http.get(url("/healthz")).send().await.unwrap();
    assert_eq!(status_json(r).await.0, StatusCode::OK);
    let r = http.get(url("/readyz")).send().await.unwrap();
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "BROKER_UNAVAILABLE").await;
    let r = http
        .post(url("/message/new"))
        .json(&json!({ "payload": 1 }))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "BROKER_UNAVAILABLE").await;

    // The broker comes up where the gateway looks for it.
    let broker = Process::builder("busmq")
        .addr(broker_addr)
        .serve("memory")
        .0
        .spawn();
    broker.wait_ready().await;
    let s = Stack {
        broker,
        gateway,
        http,
    };
    eventually(&s, "/readyz", StatusCode::OK).await;
    assert_eq!(s.push("", json!(1)).await, 1);
}

#[tokio::test]
async fn sigterm_ends_a_long_poll_and_exits_cleanly() {
    let s = stack(&[]).await;
    let url = s.url("/message/next?wait=20");
    let poll = tokio::spawn(async move { Client::new().get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "the poll answered before any push");
    let exit = s.gateway.terminate().await.expect("it was running");
    assert!(exit.success(), "{exit}");
    assert_eq!(poll.await.unwrap().unwrap(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_full_lease_book_refuses_next_until_a_lease_is_done() {
    let s = stack(&["--max-leases", "1"]).await;
    s.push("", json!("a")).await;
    s.push("", json!("b")).await;
    assert_eq!(s.next("", "").await["id"], 1);
    let r = s.get("/message/next").await;
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "TOO_MANY_LEASES").await;
    assert_eq!(s.done("", 1, "").await.0, StatusCode::OK);
    // Refused before taking anything: 2 is served now.
    assert_eq!(s.next("", "").await["id"], 2);
}

#[tokio::test]
async fn behind_two_gateways_a_done_with_its_attempt_works_on_either() {
    let s = stack(&[]).await;
    let other = gateway_for(&s.broker, &[]).await;
    let other_done = |id: u64, query: &str| {
        let url = format!("http://{}/message/{id}/status/done{query}", other.addr());
        async move { Client::new().post(url).send().await.unwrap().status() }
    };
    s.push("", json!("one")).await;
    s.push("", json!("two")).await;
    let one = s.next("", "").await;
    let two = s.next("", "").await;
    // The other replica handed out neither lease: an id-only done there
    // settles nothing.
    assert_eq!(other_done(1, "").await, StatusCode::NOT_FOUND);
    // Naming the delivery needs no book.
    let attempt = one["attempt"].as_u64().unwrap();
    assert_eq!(
        other_done(1, &format!("?attempt={attempt}")).await,
        StatusCode::OK
    );
    // And the replica that handed out 2 settles it by id alone.
    assert_eq!(two["id"], 2);
    assert_eq!(s.done("", 2, "").await.0, StatusCode::OK);
    assert_eq!(s.next_status("").await, StatusCode::NO_CONTENT);
}
