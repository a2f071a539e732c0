//! The live `/info` page of busmq-http in a real browser: a bus in real
//! processes (`tests/common`) and `busmq-http` on free loopback ports, headless Chromium driven over the
//! DevTools protocol (its WebSocket, by hand). The page must show a queue's
//! depth, then follow pushes made with the SDK live, without a reload; a
//! screenshot of it is written to `target/info-page.png` (the one in
//! `docs/info.png` was taken this way).
//!
//! Chromium is Debian's `chromium`, installed with apt-get when missing;
//! when it cannot be had, the test reports itself skipped with the reason.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use busmq_client::{AttachOptions, ConsumeOptions};
use busmq_testkit::Process;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

mod common;

/// Bound of every wait for the page.
const WAIT: Duration = Duration::from_secs(30);

/// How long installing Chromium may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);

const TEST: &str = "info_page::the_info_page_follows_pushes_live";

/// Chromium on PATH, installed with apt-get if needed; `Err` says why not.
async fn chromium() -> Result<PathBuf, String> {
    let found = || {
        ["chromium", "chromium-browser"].iter().find_map(|name| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
    };
    if let Some(path) = found() {
        return Ok(path);
    }
    let apt = |args: &'static [&'static str]| async move {
        let run = tokio::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(INSTALL_TIMEOUT, run).await {
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(format!(
                "apt-get {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            )),
            Ok(Err(e)) => Err(format!("cannot run apt-get: {e}")),
            Err(_) => Err(format!("apt-get {} timed out", args.join(" "))),
        }
    };
    if apt(&["install", "-y", "chromium"]).await.is_err() {
        apt(&["update"]).await?;
        apt(&["install", "-y", "chromium"]).await?;
    }
    found().ok_or_else(|| "apt-get installed chromium but it is not on PATH".to_owned())
}

/// The body of DevTools' `GET /json/list`, read as far as its
/// Content-Length says (the browser keeps the connection open), within a
/// second; `None` when it does not answer so.
async fn target_list(devtools: std::net::SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(devtools).await.ok()?;
        // The debugger URLs of the answer name the host this asks.
        let request = format!("GET /json/list HTTP/1.1\r\nHost: {devtools}\r\n\r\n");
        conn.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = conn.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })?;
                if body.len() >= length {
                    return Some(body[..length].to_owned());
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .ok()
        .flatten()
}

/// A DevTools session with one page.
struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Page {
    /// The first page target of the browser whose DevTools listen on
    /// `devtools`, once it shows `url`.
    async fn attach(devtools: std::net::SocketAddr, url: &str) -> Page {
        let deadline = Instant::now() + WAIT;
        let target = loop {
            let body = target_list(devtools).await.unwrap_or_default();
            let targets: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let page = targets.as_array().and_then(|all| {
                all.iter()
                    .find(|t| t["type"] == "page" && t["url"].as_str() == Some(url))
                    .cloned()
            });
            if let Some(page) = page {
                break page;
            }
            assert!(Instant::now() < deadline, "no page at {url}: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let ws_url = target["webSocketDebuggerUrl"]
            .as_str()
            .expect("a debugger URL");
        let (ws, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .expect("DevTools WebSocket");
        Page { ws, next_id: 0 }
    }

    /// Calls `method` and returns its result, skipping events.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::text(request.to_string()))
            .await
            .expect("send to DevTools");
        let answer = tokio::time::timeout(WAIT, async {
            while let Some(msg) = self.ws.next().await {
                let Ok(Message::Text(text)) = msg else {
                    continue;
                };
                let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if value["id"] == id {
                    return value;
                }
            }
            panic!("DevTools closed during {method}");
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} within {WAIT:?}"));
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// The value of `expression` in the page.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Waits until `expression` evaluates to `want`; panics after [`WAIT`]
    /// with what it last was.
    async fn wait_for(&mut self, expression: &str, want: &Value) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.eval(expression).await;
            if &got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{expression} is {got}, not {want}, after {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The depth the page shows for `queue`.
fn depth_of(queue: &str) -> String {
    format!(
        "(document.querySelector('tr[data-queue=\"{queue}\"] td.count') || {{}}).textContent || null"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_info_page_follows_pushes_live() {
    let chromium = match chromium().await {
        Ok(path) => path,
        Err(why) => return busmq_testkit::skip::skip(TEST, &why),
    };

    let c = common::cluster().await;
    let builder = Process::builder("busmq-http");
    let http = builder.listen_addr().to_string();
    let gateway = builder
        .args(["--listen", &http, "--server", &c.broker.url()])
        .spawn();
    gateway.wait_ready().await;

    // A bus with something to see: queues of several depths, a consumer,
    // a subscriber.
    let bus = c.bus.clone();
    let demo = bus.queue("info.demo");
    demo.attach(AttachOptions::default()).await.unwrap();
    demo.push_batch(["a", "b", "c"]).await.unwrap();
    for (name, depth) in [("orders.eu", 1200), ("orders.us", 480), ("emails", 35)] {
        let q = bus.queue(name);
        q.attach(AttachOptions::default()).await.unwrap();
        let batch: Vec<String> = (0..depth).map(|i| format!("{name}-{i}")).collect();
        q.push_batch(batch).await.unwrap();
    }
    let worked = bus.queue("jobs");
    worked.attach(AttachOptions::default()).await.unwrap();
    let mut consumer = worked.consume(ConsumeOptions::reliable()).await.unwrap();
    let news = bus.pubsub("news");
    news.subscribe().await.unwrap();

    let url = format!("http://{http}/info");
    let browser = Process::program("chromium", &chromium);
    let devtools = browser.listen_addr();
    let profile = browser.dir().join("profile");
    let browser = browser
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,900",
        ])
        .arg(format!("--remote-debugging-port={}", devtools.port()))
        .arg("--remote-debugging-address=127.0.0.1")
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(&url)
        .spawn();
    browser.wait_ready().await;
    let mut page = Page::attach(devtools, &url).await;

    page.wait_for(&depth_of("info.demo"), &json!("3")).await;
    page.wait_for(
        "document.querySelector('tr[data-channel=\"news\"] td.subscribers').textContent",
        &json!("1"),
    )
    .await;
    // A mark that a reload would wipe.
    page.eval("window.__notReloaded = 42").await;
    demo.push_batch(["d", "e", "f", "g", "h"]).await.unwrap();
    page.wait_for(&depth_of("info.demo"), &json!("8")).await;
    assert_eq!(
        page.eval("window.__notReloaded").await,
        json!(42),
        "reloaded"
    );

    // Traffic for the rates of the screenshot: pushes and a consumer.
    let pushing = {
        let jobs = bus.queue("jobs");
        tokio::spawn(async move {
            for i in 0..40 {
                let batch: Vec<String> = (0..25).map(|j| format!("job-{i}-{j}")).collect();
                if jobs.push_batch(batch).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let consuming = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(deadline, consumer.next()).await
        {
            if delivery.id % 3 == 0 {
                let _ = consumer.ack(delivery.id).await;
            }
        }
    });
    let rates = "['in', 'out'].every((c) => \
        Number(document.querySelector('tr[data-queue=\"jobs\"] td.' + c).textContent) > 0)";
    page.wait_for(rates, &json!(true)).await;
    let shot = page
        .call("Page.captureScreenshot", json!({ "format": "png" }))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .expect("base64 PNG");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let out = busmq_testkit::target_dir().join("info-page.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());
    pushing.abort();
    consuming.abort();
}
