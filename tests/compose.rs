//! `docker-compose.yml` end to end, on the images `deploy/local-images.sh`
//! builds from this build's binaries: the stack comes up healthy, the SDK
//! and the CLI push and consume through a published broker port, what the
//! HTTP gateway stores is consumed over gRPC, three
//! broker replicas share one queue, and killing every broker and the
//! storage service loses no acknowledged push.
//!
//! Without a Docker engine or a Compose tool the test reports itself
//! skipped with the reason. Every container, network and volume belongs to
//! one compose project named after this process, taken down (`down -v`)
//! however the test ends.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use busmq_client::{AttachOptions, Bus, ConsumeOptions, Reconnect};
use busmq_testkit::scrape;
use busmq_testkit::skip::skip;
use futures::StreamExt;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

const TEST: &str = "compose_end_to_end";
/// A compose command (`up` waits for health conditions) never takes longer
/// here; past it the machine is too slow for the test to mean anything.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);
/// The first run on a machine debootstraps the base images.
const IMAGES_TIMEOUT: Duration = Duration::from_secs(900);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(90);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `program args` in the repository root, or says why it could not.
async fn run(program: &str, args: &[&str], timeout: Duration) -> Result<Output, String> {
    let child = Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, child).await {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(err)) => Err(format!("{program} not runnable: {err}")),
        Err(_) => Err(format!("{program} {args:?} took over {timeout:?}")),
    }
}

/// The Compose tool of this machine: Docker Compose v2 (`docker compose`)
/// or docker-compose v1.
async fn compose_tool() -> Option<Vec<String>> {
    let short = Duration::from_secs(30);
    if let Ok(out) = run("docker", &["compose", "version"], short).await
        && out.status.success()
    {
        return Some(vec!["docker".into(), "compose".into()]);
    }
    if let Ok(out) = run("docker-compose", &["version"], short).await
        && out.status.success()
    {
        return Some(vec!["docker-compose".into()]);
    }
    None
}

/// Prints how long each step took, and since the start.
struct Clock {
    start: Instant,
    step: Instant,
}

impl Clock {
    fn new() -> Clock {
        let now = Instant::now();
        Clock {
            start: now,
            step: now,
        }
    }

    fn done(&mut self, what: &str) {
        let now = Instant::now();
        println!(
            "[compose {:6.1}s] {what} ({:.1}s)",
            (now - self.start).as_secs_f64(),
            (now - self.step).as_secs_f64()
        );
        self.step = now;
    }
}

/// One compose project: the repository's compose file with the local
/// images' override, under a name no other run uses.
struct Project {
    tool: Vec<String>,
    name: String,
}

impl Project {
    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all: Vec<&str> = self.tool[1..].iter().map(String::as_str).collect();
        all.extend([
            "-p",
            &self.name,
            "-f",
            "docker-compose.yml",
            "-f",
            "deploy/docker/compose.local.yml",
        ]);
        all.extend(args);
        all
    }

    /// Runs a compose command and returns its standard output, panicking
    /// with everything it printed when it fails.
    async fn ok(&self, args: &[&str]) -> String {
        let all = self.args(args);
        let out = run(&self.tool[0], &all, COMMAND_TIMEOUT)
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        assert!(
            out.status.success(),
            "{} {all:?} failed: {}",
            self.tool[0],
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The containers of `service`, by id.
    async fn containers(&self, service: &str) -> Vec<String> {
        self.ok(&["ps", "-q", service])
            .await
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Waits until `service` runs `replicas` containers, each healthy.
    async fn wait_healthy(&self, service: &str, replicas: usize) {
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            let ids = self.containers(service).await;
            if ids.len() == replicas {
                let mut args = vec!["inspect", "-f", "{{.State.Health.Status}}"];
                args.extend(ids.iter().map(String::as_str));
                let out = run("docker", &args, COMMAND_TIMEOUT).await.unwrap();
                last = String::from_utf8_lossy(&out.stdout).into_owned();
                if out.status.success() && last.lines().all(|s| s == "healthy") {
                    return;
                }
            } else {
                last = format!("{} containers", ids.len());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let logs = self.ok(&["logs", "--tail", "30", service]).await;
        panic!(
            "{service} not {replicas} healthy within {HEALTH_TIMEOUT:?} (last: {last:?}); logs:\n{logs}"
        );
    }

    /// The host address of broker replica `index` (1-based), as an URL.
    async fn broker_url(&self, index: usize) -> String {
        format!("http://{}", self.published(index, "broker", 50051).await)
    }

    /// Where replica `index` (1-based) of `service` publishes its `port`
    /// on the host.
    async fn published(&self, index: usize, service: &str, port: u16) -> SocketAddr {
        let index = index.to_string();
        let out = self
            .ok(&["port", "--index", &index, service, &port.to_string()])
            .await;
        let addr = out.trim();
        assert!(
            addr.starts_with("127.0.0.1:"),
            "{service} replica {index} published {port} on {addr:?}, not on loopback"
        );
        addr.parse()
            .unwrap_or_else(|e| panic!("{service} replica {index}: {addr:?}: {e}"))
    }
}

/// Takes the project down, volumes and all, when the test ends, panics
/// included.
struct Down<'a>(&'a Project);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let all = self.0.args(&["down", "-v", "--remove-orphans", "-t", "5"]);
        // Drop cannot await; a plain child with a bounded wait instead.
        let mut child = match std::process::Command::new(&self.0.tool[0])
            .args(&all)
            .current_dir(repo_root())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(err) => {
                eprintln!("cannot take down compose project {}: {err}", self.0.name);
                return;
            }
        };
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                if !status.success() {
                    eprintln!(
                        "down of compose project {} failed ({status}): run `{} {}`",
                        self.0.name,
                        self.0.tool[0],
                        all.join(" ")
                    );
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = child.kill();
        eprintln!("down of compose project {} timed out", self.0.name);
    }
}

async fn bus(url: &str) -> Bus {
    Bus::connect(url)
        .await
        .unwrap_or_else(|err| panic!("connecting to {url}: {err}"))
        .reconnect(Reconnect::disabled())
}

/// Consumes `queue` reliably through `bus`, acking each message, until
/// `want` messages arrived or nothing came for 10 s.
async fn consume_reliably(bus: &Bus, queue: &str, want: usize) -> Vec<String> {
    let mut consumer = bus
        .queue(queue)
        .consume(ConsumeOptions::reliable().prefetch(100))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < want {
        let next = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await;
        let Ok(Some(delivery)) = next else { break };
        let delivery = delivery.unwrap();
        got.push(String::from_utf8(delivery.payload.to_vec()).unwrap());
        consumer.ack(delivery.id).await.unwrap();
    }
    got
}

/// Pushes `m1`, `m2`, ... one at a time until stopped, recording which
/// were acknowledged. A failed push (its broker or storage killed) was
/// never acknowledged, so it is not retried or counted.
async fn produce(bus: Bus, acked: Arc<Mutex<Vec<u64>>>, stop: CancellationToken) {
    let q = bus.queue("compose-kill");
    let mut k = 0;
    while !stop.is_cancelled() {
        k += 1;
        match q.push(format!("m{k}")).await {
            Ok(_) => acked.lock().unwrap().push(k),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compose_end_to_end() {
    match run("docker", &["info"], Duration::from_secs(30)).await {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return skip(
                TEST,
                &format!("no Docker engine answers `docker info`: {}", describe(&out)),
            );
        }
        Err(err) => return skip(TEST, &format!("no Docker engine: {err}")),
    }
    let Some(tool) = compose_tool().await else {
        return skip(
            TEST,
            "neither `docker compose` nor `docker-compose` is installed",
        );
    };
    let mut clock = Clock::new();
    println!("compose tool: {}", tool.join(" "));

    // The images of this build's binaries (target/<profile>).
    let busmq = busmq_testkit::bin_path("busmq");
    busmq_testkit::bin_path("busmq-broker");
    busmq_testkit::bin_path("busmq-storage");
    busmq_testkit::bin_path("busmq-http");
    let binaries = busmq.parent().unwrap().to_str().unwrap().to_owned();
    let images = run(
        "bash",
        &["deploy/local-images.sh", "--binaries", &binaries],
        IMAGES_TIMEOUT,
    )
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    print!("{}", String::from_utf8_lossy(&images.stdout));
    assert!(
        images.status.success(),
        "deploy/local-images.sh failed: {}",
        describe(&images)
    );
    clock.done("images built (deploy/local-images.sh)");

    let project = Project {
        tool,
        name: format!("busmq-test-{}", std::process::id()),
    };
    let down = Down(&project);
    project.ok(&["config", "-q"]).await;
    project.ok(&["up", "-d"]).await;
    clock.done("up -d");
    project.wait_healthy("redis", 1).await;
    project.wait_healthy("storage", 1).await;
    project.wait_healthy("broker", 1).await;
    clock.done("redis, storage and broker healthy");
    let aof = project
        .ok(&[
            "exec",
            "-T",
            "redis",
            "redis-cli",
            "config",
            "get",
            "appendonly",
        ])
        .await;
    assert_eq!(
        aof.split_whitespace().collect::<Vec<_>>(),
        ["appendonly", "yes"]
    );
    for service in ["storage", "broker"] {
        let uid = project.ok(&["exec", "-T", service, "id", "-u"]).await;
        assert_eq!(uid.trim(), "10001", "{service} runs as the image's user");
    }
    clock.done("Redis appends to its AOF; storage and broker run as uid 10001");

    // The SDK, through the published port.
    let url1 = project.broker_url(1).await;
    let sdk = bus(&url1).await;
    sdk.queue("compose-sdk")
        .attach(AttachOptions::ttl(Duration::from_secs(600)))
        .await
        .unwrap();
    for k in 1..=3 {
        sdk.queue("compose-sdk")
            .push(format!("sdk{k}"))
            .await
            .unwrap();
    }
    assert_eq!(
        consume_reliably(&sdk, "compose-sdk", 3).await,
        ["sdk1", "sdk2", "sdk3"]
    );
    clock.done("SDK pushed and consumed 3 through the broker's published port");

    // The CLI, on the host.
    let cli = busmq.to_str().unwrap();
    let pushed = run(
        cli,
        &["push", "--server", &url1, "compose-cli", "one", "two"],
        COMMAND_TIMEOUT,
    )
    .await
    .unwrap();
    assert!(pushed.status.success(), "busmq push: {}", describe(&pushed));
    let consumed = run(
        cli,
        &[
            "consume",
            "--server",
            &url1,
            "--reliable",
            "--max",
            "2",
            "compose-cli",
        ],
        COMMAND_TIMEOUT,
    )
    .await
    .unwrap();
    assert!(
        consumed.status.success(),
        "busmq consume: {}",
        describe(&consumed)
    );
    let printed = String::from_utf8_lossy(&consumed.stdout);
    let payloads: Vec<&str> = printed
        .lines()
        .map(|l| l.split_once('\t').map_or(l, |(_, payload)| payload))
        .collect();
    assert_eq!(
        payloads,
        ["one", "two"],
        "busmq consume printed {printed:?}"
    );
    assert_eq!(
        sdk.queue("compose-cli").count().await.unwrap(),
        0,
        "busmq consume --reliable acked what it printed"
    );

    // HTTP in, gRPC out: the gateway is a client of the brokers like any
    // other, so what it stores is the queue an SDK consumer reads.
    project.wait_healthy("http", 1).await;
    let gateway = project.published(1, "http", 3000).await;
    for k in 1..=3 {
        let body = format!(r#"{{"payload":"http{k}"}}"#);
        let request = format!(
            "POST /queues/compose-http/message/new HTTP/1.1\r\nHost: busmq\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        let (status, answer) = busmq_testkit::scrape::http(gateway, &request).await;
        assert_eq!(status, 201, "POST /message/new: {answer}");
        assert_eq!(answer, format!(r#"{{"id":{k}}}"#));
    }
    // Payloads are stored as JSON text: a string arrives quoted.
    assert_eq!(
        consume_reliably(&sdk, "compose-http", 3).await,
        [r#""http1""#, r#""http2""#, r#""http3""#]
    );
    clock.done("pushed 3 over HTTP (the http service), consumed them over gRPC");
    clock.done("CLI pushed and consumed 2");

    // Three brokers: what one replica took, another delivers.
    project.ok(&["up", "-d", "--scale", "broker=3"]).await;
    project.wait_healthy("broker", 3).await;
    clock.done("up -d --scale broker=3, all healthy");
    let urls = [
        project.broker_url(1).await,
        project.broker_url(2).await,
        project.broker_url(3).await,
    ];
    assert_eq!(
        urls.iter().collect::<BTreeSet<_>>().len(),
        3,
        "each replica has its own host port: {urls:?}"
    );
    let first = bus(&urls[0]).await;
    first
        .queue("compose-scale")
        .attach(AttachOptions::ttl(Duration::from_secs(600)))
        .await
        .unwrap();
    for k in 1..=5 {
        first
            .queue("compose-scale")
            .push(format!("s{k}"))
            .await
            .unwrap();
    }
    let second = bus(&urls[1]).await;
    assert_eq!(
        consume_reliably(&second, "compose-scale", 5).await,
        ["s1", "s2", "s3", "s4", "s5"]
    );
    assert_eq!(first.queue("compose-scale").count().await.unwrap(), 0);
    let third = bus(&urls[2]).await;
    assert_eq!(third.queue("compose-scale").count().await.unwrap(), 0);
    clock.done("pushed 5 through replica 1, consumed and acked them through replica 2");

    // Each service's /metrics, through its published admin port, shows
    // what went through it: replica 1 took the pushes, replica 2 delivered
    // them, the storage service ran them against Redis.
    let pushed = "busmq_messages_pushed_total{queue=\"compose-scale\"}";
    let delivered = "busmq_messages_delivered_total{queue=\"compose-scale\",mode=\"reliable\"}";
    let replica1 = project.published(1, "broker", 9101).await;
    scrape::until_value(replica1, pushed, 5.0, HEALTH_TIMEOUT).await;
    let replica2 = project.published(2, "broker", 9101).await;
    let metrics = scrape::until_value(replica2, delivered, 5.0, HEALTH_TIMEOUT).await;
    assert_eq!(
        scrape::value(&metrics, pushed),
        None,
        "replica 2 took no push"
    );
    let storage = scrape::scrape(project.published(1, "storage", 9102).await).await;
    for series in [
        "busmq_store_commit_duration_seconds_count{backend=\"redis\"}",
        "busmq_storage_operations_total{op=\"push\"}",
    ] {
        let n = scrape::value(&storage, series);
        assert!(
            n.is_some_and(|n| n > 0.0),
            "storage {series}: {n:?}\n{storage}"
        );
    }
    clock.done(
        "/metrics of replicas 1 and 2 and of storage show the pushes, deliveries and store work",
    );

    // Kill every broker and the storage service while a producer pushes;
    // every push they acknowledged must be in Redis afterwards.
    first
        .queue("compose-kill")
        .attach(AttachOptions::ttl(Duration::from_secs(600)))
        .await
        .unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let producer = tokio::spawn(produce(first.clone(), Arc::clone(&acked), stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 200 {
        assert!(
            Instant::now() < deadline,
            "fewer than 200 pushes acknowledged within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    clock.done("200 pushes acknowledged, producer still running");
    project.ok(&["kill", "broker"]).await;
    project.ok(&["kill", "storage"]).await;
    clock.done("kill broker (3 replicas), kill storage");
    stop.cancel();
    producer.await.unwrap();
    let acked: Vec<u64> = acked.lock().unwrap().clone();
    // Redis restarts too, gracefully: the queue comes back from its
    // append-only file on the named volume.
    project.ok(&["restart", "-t", "10", "redis"]).await;
    project.wait_healthy("redis", 1).await;
    clock.done("restart redis");
    project.ok(&["up", "-d", "--scale", "broker=3"]).await;
    project.wait_healthy("storage", 1).await;
    project.wait_healthy("broker", 3).await;
    clock.done("up -d --scale broker=3 again, all healthy");

    // Ports are given anew when a container starts again.
    let url2 = project.broker_url(2).await;
    let after = bus(&url2).await;
    let count = after.queue("compose-kill").count().await.unwrap();
    let got = consume_reliably(&after, "compose-kill", count as usize).await;
    let received: BTreeSet<u64> = got
        .iter()
        .map(|p| p.trim_start_matches('m').parse().unwrap())
        .collect();
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|k| !received.contains(k))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged pushes lost ({} of {}): {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(20)]
    );
    assert_eq!(after.queue("compose-kill").count().await.unwrap(), 0);
    clock.done(&format!(
        "all {} acknowledged pushes consumed through replica 2 after the kill ({} stored)",
        acked.len(),
        got.len()
    ));

    // SIGTERM reaches the servers (exec-form entrypoint) and they drain and
    // exit 0 well inside the grace period; a signal lost on the way would
    // end in SIGKILL after it, exit code 137.
    project.ok(&["stop", "-t", "15", "broker", "storage"]).await;
    let mut ids = project.containers("broker").await;
    ids.extend(project.containers("storage").await);
    let mut args = vec!["inspect", "-f", "{{.Name}} {{.State.ExitCode}}"];
    args.extend(ids.iter().map(String::as_str));
    let exits = run("docker", &args, COMMAND_TIMEOUT).await.unwrap();
    let exits = String::from_utf8_lossy(&exits.stdout).into_owned();
    assert_eq!(exits.lines().count(), 4, "{exits}");
    assert!(
        exits.lines().all(|l| l.ends_with(" 0")),
        "stopped servers exit 0: {exits}"
    );
    clock.done("stop: 3 brokers and storage drained and exited 0 on SIGTERM");

    drop(down);
    let label = format!("label=com.docker.compose.project={}", project.name);
    for kind in ["container", "network", "volume"] {
        let mut args = vec![kind, "ls", "-q", "--filter", &label];
        if kind == "container" {
            args.push("-a");
        }
        let left = run("docker", &args, COMMAND_TIMEOUT).await.unwrap();
        assert!(
            left.status.success() && String::from_utf8_lossy(&left.stdout).trim().is_empty(),
            "{kind}s of the project left after down -v: {}",
            describe(&left)
        );
    }
    clock.done("down -v");
}

/// The two Dockerfiles share their runtime stage, so an image built on the
/// host behaves like one built from source; this keeps them from drifting.
#[test]
fn both_dockerfiles_have_the_same_runtime_stage() {
    let runtime = |file: &str| {
        let text = std::fs::read_to_string(repo_root().join("deploy/docker").join(file)).unwrap();
        let start = text
            .find("# --- runtime")
            .unwrap_or_else(|| panic!("{file} has no runtime marker"));
        let end = text
            .find("# --- end of runtime ---")
            .unwrap_or_else(|| panic!("{file} has no end-of-runtime marker"));
        text[start..end].to_owned()
    };
    assert_eq!(runtime("Dockerfile"), runtime("Dockerfile.prebuilt"));
}
