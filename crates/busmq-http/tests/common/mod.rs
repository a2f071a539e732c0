//! What the gateway's integration tests share: a `busmq serve` broker and
//! a `busmq-http` gateway in front of it as real processes, and the HTTP
//! helpers that drive and check them.

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::time::Duration;

use busmq_testkit::Process;
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};

/// A bus and a gateway in front of it.
pub struct Stack {
    pub broker: Process,
    pub gateway: Process,
    pub http: Client,
}

pub async fn broker() -> Process {
    broker_on("memory").await
}

/// `busmq serve` over `backend` (`memory`, or `embedded` in the process's
/// own directory).
pub async fn broker_on(backend: &str) -> Process {
    busmq_testkit::serve(backend).await.0
}

pub async fn gateway_for(broker: &Process, extra: &[&str]) -> Process {
    let builder = Process::builder("busmq-http");
    let listen = builder.listen_addr().to_string();
    let gateway = builder
        .args(["--listen", &listen, "--server", &broker.url()])
        .args(extra)
        .spawn();
    gateway.wait_ready().await;
    gateway
}

pub async fn stack(extra: &[&str]) -> Stack {
    let broker = broker().await;
    let gateway = gateway_for(&broker, extra).await;
    Stack {
        broker,
        gateway,
        http: Client::new(),
    }
}

impl Stack {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr())
    }

    pub async fn send(&self, method: Method, path: &str) -> Response {
        self.http
            .request(method, self.url(path))
            .send()
            .await
            .expect("the gateway answers")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.send(Method::GET, path).await
    }

    pub async fn post(&self, path: &str) -> Response {
        self.send(Method::POST, path).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.send_json(Method::POST, path, body).await
    }

    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Response {
        self.http
            .post(self.url(path))
            .form(form)
            .send()
            .await
            .expect("the gateway answers")
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Response {
        let mut request = self.http.post(self.url(path)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send().await.expect("the gateway answers")
    }

    /// `method path` with the JSON `body`.
    pub async fn send_json(&self, method: Method, path: &str, body: &Value) -> Response {
        self.http
            .request(method, self.url(path))
            .json(body)
            .send()
            .await
            .expect("the gateway answers")
    }

    /// Pushes `payload` as JSON and returns its id.
    pub async fn push(&self, prefix: &str, payload: Value) -> u64 {
        let r = self
            .post_json(
                &format!("{prefix}/message/new"),
                &json!({ "payload": payload }),
            )
            .await;
        let (status, body) = status_json(r).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_u64().expect("an id")
    }

    /// `GET {prefix}/message/next{query}`, expecting a message.
    pub async fn next(&self, prefix: &str, query: &str) -> Value {
        let (status, body) =
            status_json(self.get(&format!("{prefix}/message/next{query}")).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    pub async fn next_status(&self, prefix: &str) -> StatusCode {
        self.get(&format!("{prefix}/message/next")).await.status()
    }

    pub async fn done(&self, prefix: &str, id: u64, query: &str) -> (StatusCode, Value) {
        status_json(
            self.post(&format!("{prefix}/message/{id}/status/done{query}"))
                .await,
        )
        .await
    }
}

/// The status and the JSON body of `r` (panics on a body that is not JSON).
pub async fn status_json(r: Response) -> (StatusCode, Value) {
    let status = r.status();
    let content_type = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = r.text().await.expect("a body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: body {text:?} is not JSON ({e})"));
    assert_eq!(
        content_type.as_deref(),
        Some("application/json"),
        "{status} {text}"
    );
    (status, body)
}

/// Asserts `r` is a JSON error with `status` and `code`.
pub async fn assert_error(r: Response, status: StatusCode, code: &str) -> Value {
    let (got, body) = status_json(r).await;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    body
}

/// Asserts `r` is a 415 for a body of the wrong content type.
pub async fn assert_unsupported_media_type(r: Response) {
    assert_error(
        r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    .await;
}

/// Polls `path` until it answers `status`, for at most 20 s.
pub async fn eventually(s: &Stack, path: &str, status: StatusCode) {
    for _ in 0..200 {
        if s.get(path).await.status() == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} did not answer {status} within 20 s");
}
