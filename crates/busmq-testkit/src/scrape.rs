//! Reading a busmq process's Prometheus `/metrics` as a scraper does: a
//! plain HTTP/1.1 GET of its admin port, and the value of one series.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 exchange with `addr`: `request` as written, then the
/// status code and the body of the answer.
///
/// # Panics
///
/// When nothing answers at `addr` or the answer is not HTTP.
pub async fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to the metrics port {addr}: {e}"));
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).expect("an HTTP answer in UTF-8");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `GET path` from `addr`, closing the connection after the answer.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: busmq\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// The body of `GET /metrics` from `addr`.
///
/// # Panics
///
/// When the answer is not 200.
pub async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics answered {status}: {body}");
    body
}

/// The value of the series written exactly `series` (name and labels in
/// the exporter's order), if it is there.
pub fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// Scrapes `addr` until `series` reads `want` and returns that scrape;
/// panics with the last scrape when it does not within `timeout`.
pub async fn until_value(addr: SocketAddr, series: &str, want: f64, timeout: Duration) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let metrics = scrape(addr).await;
        if value(&metrics, series) == Some(want) {
            return metrics;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "{series} is {:?}, not {want}, after {timeout:?}:\n{metrics}",
                value(&metrics, series)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
