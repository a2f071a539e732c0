//! The reference ceiling of the HTTP benchmark (scripts/bench-http.sh): the
//! message-queue API's three routes over an in-memory `VecDeque` behind one
//! mutex, with no store, no broker and no lease expiry. Whatever
//! `busmq-http` does beyond parsing and answering HTTP is the gap between
//! the two.
//!
//!   cargo run --release -p busmq-http --example ceiling -- 127.0.0.1:3900

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

#[derive(Default)]
struct Queue {
    next_id: u64,
    waiting: VecDeque<(u64, Value)>,
    leased: HashMap<u64, Value>,
}

type Shared = State<Arc<Mutex<Queue>>>;

async fn new(State(q): Shared, Json(body): Json<Value>) -> Response {
    let Some(payload) = body.get("payload").cloned() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "no payload"})),
        )
            .into_response();
    };
    let mut q = q.lock().unwrap();
    q.next_id += 1;
    let id = q.next_id;
    q.waiting.push_back((id, payload));
    (StatusCode::CREATED, Json(json!({ "id": id }))).into_response()
}

async fn next(State(q): Shared) -> Response {
    let mut q = q.lock().unwrap();
    match q.waiting.pop_front() {
        Some((id, payload)) => {
            q.leased.insert(id, payload.clone());
            Json(json!({ "id": id, "payload": payload, "attempt": 1 })).into_response()
        }
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn done(State(q): Shared, Path(id): Path<u64>) -> Response {
    match q.lock().unwrap().leased.remove(&id) {
        Some(_) => Json(json!({ "id": id })).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": "not leased"}))).into_response(),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3900".to_owned());
    let app = Router::new()
        .route("/message/new", post(new))
        .route("/message/next", get(next))
        .route("/message/{id}/status/done", post(done))
        .with_state(Arc::new(Mutex::new(Queue::default())));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
