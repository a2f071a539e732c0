//! Channels across real processes: `busmq-storage` and `busmq-broker` run as
//! separate programs, and (each test twice) one `busmq serve`; peers are
//! `busmq channel` CLI processes or SDK sessions in the test, and the raw
//! gRPC API for bad input.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use busmq_client::{Bus, ChannelEvent, ChannelSession, ConsumeOptions, ErrorCode, Reconnect};
use busmq_proto::v1 as pb;
use busmq_proto::v1::channels_client::ChannelsClient;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

mod common;

use common::cluster;

const WAIT: Duration = Duration::from_secs(30);

/// A `busmq channel` process whose standard output the test reads line by
/// line.
struct CliPeer {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl CliPeer {
    /// Starts `busmq channel NAME ARGS...` and writes `input` (one message
    /// per line) to its standard input, then closes it.
    fn spawn(server: &str, name: &str, args: &[&str], input: Vec<String>) -> CliPeer {
        let mut child = Command::new(busmq_testkit::bin_path("busmq"))
            .args(["channel", name, "--server", server])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn busmq channel");
        let mut stdin = child.stdin.take().unwrap();
        tokio::spawn(async move {
            let mut text = String::new();
            for line in input {
                text.push_str(&line);
                text.push('\n');
            }
            // A peer that exits early closes the pipe; that is its own
            // failure, seen through its exit status.
            let _ = stdin.write_all(text.as_bytes()).await;
        });
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        CliPeer { child, lines }
    }

    async fn line(&mut self) -> Option<String> {
        tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a line of output within 30 s")
            .expect("read output")
    }

    /// Reads lines up to and including `wanted`, returning those before it.
    async fn until(&mut self, wanted: &str) -> Vec<String> {
        let mut before = Vec::new();
        loop {
            match self.line().await {
                Some(line) if line == wanted => return before,
                Some(line) => before.push(line),
                None => panic!("output ended before {wanted:?}; got {before:?}"),
            }
        }
    }

    /// Reads every remaining line and waits for a successful exit.
    async fn finish(mut self) -> Vec<String> {
        let mut rest = Vec::new();
        while let Some(line) = self.line().await {
            rest.push(line);
        }
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exit within 30 s")
            .unwrap();
        assert!(
            status.success(),
            "busmq channel failed: {status}; output {rest:?}"
        );
        rest
    }
}

/// The payloads of the `message` lines, in order.
fn payloads(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("message\t"))
        .map(|rest| rest.split_once('\t').expect("ID<TAB>PAYLOAD").1.to_owned())
        .collect()
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The next event within 30 s; panics if the session ended.
async fn event(s: &mut ChannelSession) -> ChannelEvent {
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("an event within 30 s")
        .expect("the session is still open")
}

/// Waits for a message event, skipping presence events.
async fn message(s: &mut ChannelSession) -> (u64, String) {
    loop {
        match event(s).await {
            ChannelEvent::Message { id, payload } => {
                return (id, String::from_utf8(payload.to_vec()).unwrap());
            }
            ChannelEvent::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
}

async fn two_cli_peers_exchange_ten_thousand_messages_each_way_in_order_whoever_connects_first() {
    const N: usize = 10_000;
    let c = cluster().await;
    let url = c.broker.url();
    for (round, first_listens) in [(0, true), (1, false)] {
        let name = format!("pair{round}");
        let (first_args, second_args) = if first_listens {
            (["--listen"], ["--connect"])
        } else {
            (["--connect"], ["--listen"])
        };
        let count = N.to_string();
        let first_input = numbered("first", N);
        let second_input = numbered("second", N);

        // The first peer is alone and sends all its messages at once.
        let mut first = CliPeer::spawn(
            &url,
            &name,
            &[first_args[0], "--count", &count],
            first_input.clone(),
        );
        assert!(
            first.until("connect").await.is_empty(),
            "connect comes first"
        );
        // Its messages wait in the other endpoint's queue (with its
        // connect frame) before that endpoint has a peer.
        let waiting_queue = if first_listens {
            format!("channel:{name}:local")
        } else {
            format!("channel:{name}:remote")
        };
        let q = c.bus.queue(waiting_queue);
        for _ in 0..600 {
            if q.info().await.unwrap().count == N as u64 + 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(q.info().await.unwrap().count, N as u64 + 1);

        let mut second = CliPeer::spawn(
            &url,
            &name,
            &[second_args[0], "--count", &count],
            second_input.clone(),
        );
        assert!(second.until("connect").await.is_empty());

        // Each sees the other connect, then every message in order.
        let first_before = first.until("remote:connect").await;
        assert!(first_before.is_empty(), "{first_before:?}");
        let first_rest = first.finish().await;
        let second_rest = second.finish().await;
        assert_eq!(
            second_rest.first().map(String::as_str),
            Some("remote:connect")
        );
        assert_eq!(payloads(&first_rest), second_input, "round {round}");
        assert_eq!(payloads(&second_rest), first_input, "round {round}");
    }
}

async fn presence_and_end_events_reach_the_other_peer() {
    let c = cluster().await;
    let server = c.bus.channel("presence");
    let mut listener = server.listen().await.unwrap();
    assert!(matches!(
        event(&mut listener).await,
        ChannelEvent::Connect { .. }
    ));

    // A peer in another process connects, sends one line and leaves.
    let peer = CliPeer::spawn(
        &c.broker.url(),
        "presence",
        &["--connect", "--count", "0"],
        vec!["hi".to_owned()],
    );
    let lines = peer.finish().await;
    assert_eq!(
        lines.first().map(String::as_str),
        Some("connect"),
        "{lines:?}"
    );
    // It said goodbye once its line was stored.
    assert_eq!(
        lines.last().map(String::as_str),
        Some("disconnect"),
        "{lines:?}"
    );
    assert!(matches!(
        event(&mut listener).await,
        ChannelEvent::RemoteConnect
    ));
    assert_eq!(message(&mut listener).await.1, "hi");
    assert!(matches!(
        event(&mut listener).await,
        ChannelEvent::RemoteDisconnect
    ));

    // It comes back and the listener ends the channel: both see `end`.
    let mut connector = c.bus.channel("presence").connect().await.unwrap();
    assert!(matches!(
        event(&mut connector).await,
        ChannelEvent::Connect { .. }
    ));
    // The listener connected before: its connect frame waited for us.
    assert!(matches!(
        event(&mut connector).await,
        ChannelEvent::RemoteConnect
    ));
    assert!(matches!(
        event(&mut listener).await,
        ChannelEvent::RemoteConnect
    ));
    listener.send("last words").await.unwrap();
    listener.end().await.unwrap();
    assert!(matches!(
        event(&mut listener).await,
        ChannelEvent::End { by_self: true }
    ));
    assert_eq!(message(&mut connector).await.1, "last words");
    assert!(matches!(
        event(&mut connector).await,
        ChannelEvent::End { by_self: false }
    ));

    // Sending on an ended channel fails, on both sides.
    for session in [&listener, &connector] {
        let err = session.send("too late").await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::FailedPrecondition, "{err}");
    }
    // Both queues are gone.
    for queue in ["channel:presence:local", "channel:presence:remote"] {
        let mut gone = false;
        for _ in 0..100 {
            gone = !c.bus.queue(queue).exists().await.unwrap();
            if gone {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gone, "{queue} is closed");
    }
    connector.disconnect().await.unwrap();
    listener.disconnect().await.unwrap();
}

async fn explicit_roles_connect_both_ways() {
    let c = cluster().await;
    let mut server = c
        .bus
        .channel_with_roles("zoo", "server", "client")
        .connect()
        .await
        .unwrap();
    let mut client = c
        .bus
        .channel_with_roles("zoo", "client", "server")
        .connect()
        .await
        .unwrap();
    client.send("hello server!").await.unwrap();
    server.send("hello client!").await.unwrap();
    assert_eq!(message(&mut server).await.1, "hello server!");
    assert_eq!(message(&mut client).await.1, "hello client!");
}

async fn a_reliable_peer_that_dies_without_acking_gets_its_messages_again() {
    const N: usize = 20_000;
    let c = cluster().await;
    let sender = c.bus.channel("jobs").listen().await.unwrap();
    let payload = "x".repeat(64);
    for i in 0..N {
        sender.send(format!("{i}:{payload}")).await.unwrap();
    }
    // A reliable peer in another process prints and acks each batch;
    // nobody reads its output after the first lines, so it blocks on a full
    // pipe with messages delivered and not acked. Then it is killed.
    let mut peer = CliPeer::spawn(
        &c.broker.url(),
        "jobs",
        &["--connect", "--reliable"],
        vec![],
    );
    assert_eq!(peer.line().await.as_deref(), Some("connect"));
    let inbound = c.bus.queue("channel:jobs:local");
    let mut last_consumed = u64::MAX;
    for _ in 0..400 {
        let info = inbound.info().await.unwrap();
        if info.pending > 0 && info.consumed == last_consumed {
            break;
        }
        last_consumed = info.consumed;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(inbound.info().await.unwrap().pending > 0);
    peer.child.start_kill().unwrap();
    peer.child.wait().await.unwrap();
    // The broker noticed: the sender sees the peer come and go, and the
    // dead peer's attachments are gone.
    let mut sender = sender;
    assert!(matches!(
        event(&mut sender).await,
        ChannelEvent::Connect { .. }
    ));
    assert!(matches!(
        event(&mut sender).await,
        ChannelEvent::RemoteConnect
    ));
    assert!(matches!(
        event(&mut sender).await,
        ChannelEvent::RemoteDisconnect
    ));
    assert_eq!(inbound.info().await.unwrap().attachments, 1);
    let mut handled = BTreeSet::new();
    while let Ok(Some(line)) = peer.lines.next_line().await {
        if let Some(rest) = line.strip_prefix("message\t") {
            let (_, text) = rest.split_once('\t').unwrap();
            handled.insert(text.split(':').next().unwrap().parse::<usize>().unwrap());
        }
    }
    assert!(handled.len() < N, "killed part way through");

    // It comes back (as an SDK session): what it did not ack comes again,
    // in order, then the rest.
    let mut back = loop {
        match c
            .bus
            .channel("jobs")
            .connect_with(ConsumeOptions::reliable())
            .await
        {
            Ok(s) => break s,
            // The broker lets go of the dead peer's lock once it notices.
            Err(e) if e.code() == ErrorCode::FailedPrecondition => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    let ChannelEvent::Connect { redelivered } = event(&mut back).await else {
        panic!("connect first");
    };
    assert!(redelivered > 0);
    let mut next_expected = None;
    let mut last_id = 0;
    while handled.len() < N {
        let (id, text) = message(&mut back).await;
        let i: usize = text.split(':').next().unwrap().parse().unwrap();
        if let Some(expected) = next_expected {
            assert_eq!(i, expected, "in order");
        }
        next_expected = Some(i + 1);
        handled.insert(i);
        last_id = id;
    }
    back.ack(last_id).await.unwrap();
    back.disconnect().await.unwrap();
    assert_eq!(handled.len(), N, "nothing lost");

    // Everything acked: the next session gets nothing again.
    let mut again = c
        .bus
        .channel("jobs")
        .connect_with(ConsumeOptions::reliable())
        .await
        .unwrap();
    assert!(matches!(
        event(&mut again).await,
        ChannelEvent::Connect { redelivered: 0 }
    ));
    // The sender answers the new session's Connect with its own (see the
    // README's channels section): that answer is the only frame the new
    // session may have taken, and it arrives as presence, not a message.
    assert!(matches!(
        event(&mut again).await,
        ChannelEvent::RemoteConnect
    ));
    assert!(inbound.info().await.unwrap().pending <= 1);
}

async fn send_to_reaches_an_endpoint_without_connecting() {
    let c = cluster().await;
    // From another process, before anyone is on the channel.
    let cli = CliPeer::spawn(
        &c.broker.url(),
        "mailbox",
        &["--send-to", "local"],
        vec!["one".to_owned(), "two".to_owned()],
    );
    assert_eq!(cli.finish().await, ["1", "2"]);
    // And from the SDK.
    let id = c
        .bus
        .channel("mailbox")
        .send_to("local", "three")
        .await
        .unwrap();
    assert_eq!(id, 3);

    // A peer consuming `local` gets them in order; the sender never
    // connected, so there is no remote:connect before them.
    let mut reader = c.bus.channel("mailbox").connect().await.unwrap();
    assert!(matches!(
        event(&mut reader).await,
        ChannelEvent::Connect { .. }
    ));
    for expected in ["one", "two", "three"] {
        match event(&mut reader).await {
            ChannelEvent::Message { payload, .. } => assert_eq!(payload, expected),
            other => panic!("expected {expected:?}, got {other:?}"),
        }
    }
}

async fn raw_client(c: &common::Cluster) -> ChannelsClient<tonic::transport::Channel> {
    ChannelsClient::connect(c.broker.url()).await.unwrap()
}

fn open(name: &str, local: &str, remote: &str) -> pb::ChannelRequest {
    pb::ChannelRequest {
        request: Some(pb::channel_request::Request::Open(pb::OpenChannel {
            name: name.to_owned(),
            local: local.to_owned(),
            remote: remote.to_owned(),
            ..Default::default()
        })),
    }
}

/// Opens a raw session with these requests; the status of the open.
async fn open_status(c: &common::Cluster, requests: Vec<pb::ChannelRequest>) -> tonic::Code {
    let mut client = raw_client(c).await;
    match client.open(futures::stream::iter(requests)).await {
        Ok(response) => {
            let mut events = response.into_inner();
            match events.message().await {
                Err(status) => status.code(),
                Ok(_) => tonic::Code::Ok,
            }
        }
        Err(status) => status.code(),
    }
}

async fn bad_input_gets_clear_errors() {
    let c = cluster().await;
    let invalid = tonic::Code::InvalidArgument;
    let send = pb::ChannelRequest {
        request: Some(pb::channel_request::Request::Send(pb::ChannelSend {
            messages: vec!["x".into()],
        })),
    };
    // The first request is not an open; no request at all.
    assert_eq!(open_status(&c, vec![send.clone()]).await, invalid);
    assert_eq!(open_status(&c, vec![]).await, invalid);
    // Unknown (malformed) roles, the same role twice, bad names.
    let long_name = "n".repeat(200);
    for (name, local, remote) in [
        ("ch", "lo:cal", "remote"),
        ("ch", "local", "re.mote"),
        ("ch", "local", "a b"),
        ("ch", "same", "same"),
        ("", "local", "remote"),
        ("c/h", "local", "remote"),
        (long_name.as_str(), "local", "remote"),
    ] {
        assert_eq!(
            open_status(&c, vec![open(name, local, remote)]).await,
            invalid,
            "{name:?} {local:?} {remote:?}"
        );
    }
    // Lease mode is not a channel mode.
    let mut lease = open("ch", "", "");
    if let Some(pb::channel_request::Request::Open(o)) = lease.request.as_mut() {
        o.mode = pb::ConsumeMode::Lease.into();
    }
    assert_eq!(open_status(&c, vec![lease]).await, invalid);
    // The SDK refuses it before sending, with the same code.
    let err = c
        .bus
        .channel("ch")
        .connect_with(ConsumeOptions::lease(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    let err = c
        .bus
        .channel_with_roles("ch", "x", "x")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    // sendTo an unknown (malformed) endpoint or none.
    for endpoint in ["", "a:b", "x.dlq"] {
        let err = c
            .bus
            .channel("ch")
            .send_to(endpoint, "x")
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            ErrorCode::InvalidArgument,
            "{endpoint:?}: {err}"
        );
    }
    // The CLI says what is wrong and fails.
    let out = Command::new(busmq_testkit::bin_path("busmq"))
        .args(["channel", "ch", "--connect", "--local", "no:pe", "--server"])
        .arg(c.broker.url())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown role"), "{stderr}");

    // Requests after open that the session refuses come back as error
    // events, and the session goes on.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(open("errs", "", "")).await.unwrap();
    let mut events = raw_client(&c)
        .await
        .open(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut next_event = async || {
        let batch = tokio::time::timeout(WAIT, events.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        batch.events.into_iter().next().unwrap().event.unwrap()
    };
    assert!(matches!(
        next_event().await,
        pb::channel_event::Event::Connect(_)
    ));
    let code_of = |e: pb::channel_event::Event| match e {
        pb::channel_event::Event::Error(e) => tonic::Code::from_i32(e.code),
        other => panic!("expected an error event, got {other:?}"),
    };
    // A second open; an ack in unreliable mode.
    tx.send(open("errs", "", "")).await.unwrap();
    assert_eq!(code_of(next_event().await), invalid);
    tx.send(pb::ChannelRequest {
        request: Some(pb::channel_request::Request::Ack(pb::ChannelAck { id: 1 })),
    })
    .await
    .unwrap();
    assert_eq!(code_of(next_event().await), invalid);
    // End, then send and end again: FAILED_PRECONDITION.
    let end = pb::ChannelRequest {
        request: Some(pb::channel_request::Request::End(pb::ChannelEnd {})),
    };
    tx.send(end.clone()).await.unwrap();
    assert!(matches!(next_event().await, pb::channel_event::Event::End(e) if e.by_self));
    tx.send(send).await.unwrap();
    assert_eq!(code_of(next_event().await), tonic::Code::FailedPrecondition);
    tx.send(end).await.unwrap();
    assert_eq!(code_of(next_event().await), tonic::Code::FailedPrecondition);

    // A message over the size limit is refused, the session goes on.
    let mut big = c.bus.channel("sizes").connect().await.unwrap();
    assert!(matches!(
        event(&mut big).await,
        ChannelEvent::Connect { .. }
    ));
    big.send(vec![0u8; 1024 * 1024 + 1]).await.unwrap();
    match event(&mut big).await {
        ChannelEvent::Error(e) => assert_eq!(e.code(), ErrorCode::ResourceExhausted, "{e}"),
        other => panic!("expected an error, got {other:?}"),
    }
    big.send("small").await.unwrap();
    big.disconnect().await.unwrap();
    let info = c.bus.queue("channel:sizes:remote").info().await.unwrap();
    assert_eq!(info.count, 3, "connect, small, disconnect");

    // One reliable peer per endpoint: a second is refused.
    let _first = c
        .bus
        .channel("solo")
        .connect_with(ConsumeOptions::reliable())
        .await
        .unwrap();
    let err = c
        .bus
        .channel("solo")
        .connect_with(ConsumeOptions::reliable())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::FailedPrecondition, "{err}");
}

async fn a_peer_that_reads_late_still_gets_everything_in_order() {
    // 16 MiB in all: more than every HTTP/2 window and buffer between the
    // broker and a peer that does not read.
    const N: usize = 2_000;
    let c = cluster().await;
    let sender = c.bus.channel("slow").listen().await.unwrap();
    let filler = "f".repeat(8 * 1024);
    for i in 0..N {
        sender.send(format!("{i}:{filler}")).await.unwrap();
    }
    let mut reader = c
        .bus
        .channel("slow")
        .connect_with(ConsumeOptions::default().prefetch(16))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Requests still flow while the reader does not read.
    reader.send("back").await.unwrap();
    let mut sender = sender;
    assert_eq!(message(&mut sender).await.1, "back");
    for i in 0..N {
        let (_, text) = message(&mut reader).await;
        assert_eq!(text.split(':').next().unwrap(), i.to_string());
    }
}

async fn peers_on_two_brokers_of_one_store_talk() {
    const N: usize = 1_000;
    let c = cluster().await;
    let second = busmq_testkit::broker(c.storage_addr).await;
    let other_bus = busmq_client::Bus::connect(second.url()).await.unwrap();
    let mut a = c.bus.channel("span").listen().await.unwrap();
    let mut b = other_bus.channel("span").connect().await.unwrap();
    for i in 0..N {
        a.send(format!("a{i}")).await.unwrap();
        b.send(format!("b{i}")).await.unwrap();
    }
    for (session, from) in [(&mut a, "b"), (&mut b, "a")] {
        assert!(matches!(event(session).await, ChannelEvent::Connect { .. }));
        assert!(matches!(event(session).await, ChannelEvent::RemoteConnect));
        for i in 0..N {
            assert_eq!(message(session).await.1, format!("{from}{i}"));
        }
    }
    b.disconnect().await.unwrap();
    assert!(matches!(
        event(&mut a).await,
        ChannelEvent::RemoteDisconnect
    ));
}

async fn persistent_peers_read_everything_again_and_ttl_applies_to_both_queues() {
    let c = cluster().await;
    let sender = c
        .bus
        .channel("log")
        .with_ttl(Duration::from_secs(90))
        .listen()
        .await
        .unwrap();
    for line in ["one", "two", "three"] {
        sender.send(line).await.unwrap();
    }
    for queue in ["channel:log:local", "channel:log:remote"] {
        assert_eq!(c.bus.queue(queue).info().await.unwrap().ttl.as_secs(), 90);
    }
    // Persistent reads remove nothing: a second reader from index 0 reads
    // the same messages with the same ids.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let mut reader = c
            .bus
            .channel("log")
            .connect_with(ConsumeOptions::persistent(0))
            .await
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(message(&mut reader).await);
        }
        // Nothing to ack in persistent mode.
        reader.ack(got[2].0).await.unwrap();
        match event(&mut reader).await {
            ChannelEvent::Error(e) => assert_eq!(e.code(), ErrorCode::InvalidArgument),
            other => panic!("expected an error, got {other:?}"),
        }
        reader.disconnect().await.unwrap();
        seen.push(got);
    }
    assert_eq!(seen[0], seen[1]);
    let texts: Vec<_> = seen[0].iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, ["one", "two", "three"]);
    // A zero ttl is refused.
    let err = c
        .bus
        .channel("log")
        .with_ttl(Duration::ZERO)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
}

async fn a_broker_shutting_down_disconnects_its_peers() {
    let c = cluster().await;
    let second = busmq_testkit::broker(c.storage_addr).await;
    // Without reconnection, so b's session ends where its broker does.
    let other_bus = busmq_client::Bus::connect(second.url())
        .await
        .unwrap()
        .reconnect(Reconnect::disabled());
    let mut a = c.bus.channel("restart").listen().await.unwrap();
    let mut b = other_bus.channel("restart").connect().await.unwrap();
    assert!(matches!(event(&mut a).await, ChannelEvent::Connect { .. }));
    assert!(matches!(event(&mut a).await, ChannelEvent::RemoteConnect));
    assert!(matches!(event(&mut b).await, ChannelEvent::Connect { .. }));
    assert!(matches!(event(&mut b).await, ChannelEvent::RemoteConnect));

    // SIGTERM to b's broker: b's session ends with UNAVAILABLE (reconnect
    // elsewhere), and a hears that b is gone.
    let status = second.terminate().await.expect("it was running");
    assert!(status.success(), "{status}");
    match event(&mut b).await {
        ChannelEvent::Error(e) => assert!(e.is_unavailable(), "{e}"),
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(matches!(
        event(&mut a).await,
        ChannelEvent::RemoteDisconnect
    ));

    // b comes back through the other broker and the channel goes on.
    let mut b = c.bus.channel("restart").connect().await.unwrap();
    b.send("again").await.unwrap();
    assert_eq!(message(&mut a).await.1, "again");
    assert!(matches!(event(&mut b).await, ChannelEvent::Connect { .. }));
}

async fn a_reliable_cli_peer_acks_what_it_printed() {
    const N: usize = 500;
    let c = cluster().await;
    let sender = c.bus.channel("acked").listen().await.unwrap();
    let input = numbered("m", N);
    for line in &input {
        sender.send(line.clone()).await.unwrap();
    }
    let count = N.to_string();
    let cli = CliPeer::spawn(
        &c.broker.url(),
        "acked",
        &["--connect", "--reliable", "--count", &count],
        vec![],
    );
    assert_eq!(payloads(&cli.finish().await), input);

    // The next reliable session of that endpoint gets nothing of it again:
    // its first message is the one sent after.
    sender.send("after").await.unwrap();
    let mut next = c
        .bus
        .channel("acked")
        .connect_with(ConsumeOptions::reliable())
        .await
        .unwrap();
    assert_eq!(message(&mut next).await.1, "after");
}

async fn an_end_waits_for_a_peer_that_was_not_there() {
    let c = cluster().await;
    let mut a = c.bus.channel("later").listen().await.unwrap();
    a.send("before the end").await.unwrap();
    a.end().await.unwrap();
    assert!(matches!(event(&mut a).await, ChannelEvent::Connect { .. }));
    assert!(matches!(
        event(&mut a).await,
        ChannelEvent::End { by_self: true }
    ));
    // a's own queue is gone at once; the other one waits with the data and
    // the end.
    assert!(!c.bus.queue("channel:later:remote").exists().await.unwrap());
    assert_eq!(
        c.bus
            .queue("channel:later:local")
            .info()
            .await
            .unwrap()
            .count,
        3,
        "connect, data, end"
    );

    let mut b = c.bus.channel("later").connect().await.unwrap();
    assert!(matches!(event(&mut b).await, ChannelEvent::Connect { .. }));
    assert!(matches!(event(&mut b).await, ChannelEvent::RemoteConnect));
    assert_eq!(message(&mut b).await.1, "before the end");
    assert!(matches!(
        event(&mut b).await,
        ChannelEvent::End { by_self: false }
    ));
    assert!(!c.bus.queue("channel:later:local").exists().await.unwrap());
    let err = b.send("after").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::FailedPrecondition);
}

async fn sending_to_a_peer_that_ended_is_refused_before_its_end_is_read() {
    let c = cluster().await;
    let mut a = c.bus.channel("race").listen().await.unwrap();
    let mut b = c.bus.channel("race").connect().await.unwrap();
    assert!(matches!(event(&mut b).await, ChannelEvent::Connect { .. }));
    a.end().await.unwrap();
    assert!(matches!(event(&mut a).await, ChannelEvent::Connect { .. }));
    loop {
        if matches!(event(&mut a).await, ChannelEvent::End { .. }) {
            break;
        }
    }
    // b has not read its events, so its SDK lets the send go out; the
    // broker refuses it either way: b's session read the end already, or
    // a's queue is closed (it was before a got its own `end`).
    b.send("too late").await.unwrap();
    let (mut refused, mut ended) = (false, false);
    while !(refused && ended) {
        match event(&mut b).await {
            ChannelEvent::Error(e) => {
                assert_eq!(e.code(), ErrorCode::FailedPrecondition, "{e}");
                refused = true;
            }
            ChannelEvent::End { by_self: false } => ended = true,
            _ => {}
        }
    }
    assert!(!c.bus.queue("channel:race:remote").exists().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_ride_through_a_broker_restart_and_a_reliable_peer_loses_nothing_stored() {
    // Messages the receiver acks before the broker dies; the rest of what
    // it received then is un-acked and must come again.
    const ACKED: u64 = 50;
    const BEFORE_KILL: u64 = 200;
    const AFTER_RESTART: u64 = 300;
    let storage = busmq_testkit::storage().await;
    let broker = common::broker_with_short_lock_lease(&storage).await;
    let bus = Bus::connect(broker.url()).await.unwrap();
    let channel = bus.channel("ride").with_ttl(Duration::from_secs(600));
    let mut receiver = channel
        .connect_with(ConsumeOptions::reliable())
        .await
        .unwrap();
    let sender = channel.listen().await.unwrap();

    // The sending peer: one task sends 0, 1, 2, ... while another reads
    // its session's events, which is what drives its reconnect. `back` is
    // set when its session is open again after the restart.
    let back = Arc::new(AtomicBool::new(false));
    let stop_sending = Arc::new(AtomicBool::new(false));
    let (leave, left) = tokio::sync::oneshot::channel::<()>();
    let sends = tokio::spawn({
        let (tx, back, stop) = (
            sender.sender(),
            Arc::clone(&back),
            Arc::clone(&stop_sending),
        );
        async move {
            // The first number sent once the session was back, and the next
            // one to send.
            let mut resumed = None;
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if resumed.is_none() && back.load(Ordering::Relaxed) {
                    resumed = Some(k);
                }
                tx.send(k.to_string())
                    .await
                    .expect("sends wait out the outage");
                k += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (resumed.expect("the sender's session came back"), k)
        }
    });
    let sender_events = tokio::spawn({
        let back = Arc::clone(&back);
        async move {
            let mut sender = sender;
            let mut left = left;
            let mut reconnecting = false;
            loop {
                let event = tokio::select! {
                    _ = &mut left => break,
                    event = sender.next() => event.expect("the sender's session goes on"),
                };
                match event {
                    ChannelEvent::Reconnecting(_) => reconnecting = true,
                    ChannelEvent::Connect { .. } if reconnecting => {
                        back.store(true, Ordering::Relaxed)
                    }
                    ChannelEvent::Error(e) => panic!("sender: {e}"),
                    _ => {}
                }
            }
            assert!(sender.reconnects() >= 1);
            // Everything sent is applied before the disconnect is confirmed.
            sender.disconnect().await.unwrap();
        }
    });

    // Before the kill: ack the first messages, leave the rest un-acked.
    let mut before = Vec::new();
    while (before.len() as u64) < BEFORE_KILL {
        let (id, text) = message(&mut receiver).await;
        let k: u64 = text.parse().unwrap();
        before.push(k);
        if k + 1 == ACKED {
            receiver.ack(id).await.unwrap();
        }
    }
    assert_eq!(before, (0..BEFORE_KILL).collect::<Vec<_>>(), "in order");
    broker.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.restart().await;

    // The same session object goes on: it says it is reconnecting, then
    // the new session's connect, with the un-acked messages put back.
    let mut reconnecting = false;
    let redelivered = loop {
        match event(&mut receiver).await {
            ChannelEvent::Reconnecting(_) => reconnecting = true,
            ChannelEvent::Connect { redelivered } => break redelivered,
            ChannelEvent::Error(e) => panic!("receiver: {e}"),
            // Messages already on their way before the kill.
            _ => {}
        }
    };
    assert!(reconnecting, "Reconnecting comes before the new Connect");
    assert!(redelivered > 0, "un-acked messages are put back");
    assert_eq!(receiver.reconnects(), 1);

    // After it: in order, every message received but not acked before the
    // kill comes again, then the rest.
    let mut after = Vec::new();
    let mut last_id = 0;
    while (after.len() as u64) < AFTER_RESTART || !back.load(Ordering::Relaxed) {
        let (id, text) = message(&mut receiver).await;
        after.push(text.parse::<u64>().unwrap());
        last_id = id;
    }
    stop_sending.store(true, Ordering::Relaxed);
    let (resumed, sent) = sends.await.unwrap();
    let _ = leave.send(());
    sender_events.await.unwrap();
    while *after.last().unwrap() + 1 < sent {
        let (id, text) = message(&mut receiver).await;
        after.push(text.parse::<u64>().unwrap());
        last_id = id;
    }
    receiver.ack(last_id).await.unwrap();
    assert!(
        after.windows(2).all(|w| w[0] < w[1]),
        "in order, each once: {after:?}"
    );
    let again: BTreeSet<u64> = after.iter().copied().collect();
    let unacked = ACKED..BEFORE_KILL;
    assert!(
        unacked.clone().all(|k| again.contains(&k)),
        "every un-acked message {unacked:?} comes again: {after:?}"
    );
    assert!(
        (resumed..sent).all(|k| again.contains(&k)),
        "every message sent after the sender was back ({resumed}..{sent}) arrives: {after:?}"
    );
    receiver.disconnect().await.unwrap();
}

async fn a_persistent_session_resumes_where_it_was_after_its_broker_shut_down_and_came_back() {
    let c = cluster().await;
    let second = busmq_testkit::broker(c.storage_addr).await;
    let other_bus = Bus::connect(second.url()).await.unwrap();
    let mut a = c.bus.channel("resume").listen().await.unwrap();
    let mut b = other_bus
        .channel("resume")
        .connect_with(ConsumeOptions::persistent(0))
        .await
        .unwrap();
    for i in 0..10 {
        a.send(i.to_string()).await.unwrap();
    }
    for i in 0..10 {
        assert_eq!(message(&mut b).await.1, i.to_string());
    }

    // b's broker shuts down: b reconnects (UNAVAILABLE is worth it) and a
    // hears that b left.
    let status = second.terminate().await.expect("it was running");
    assert!(status.success(), "{status}");
    match event(&mut b).await {
        ChannelEvent::Reconnecting(e) => assert!(e.is_unavailable(), "{e}"),
        other => panic!("expected reconnecting, got {other:?}"),
    }
    loop {
        match event(&mut a).await {
            ChannelEvent::RemoteDisconnect => break,
            ChannelEvent::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    // Meanwhile a goes on sending, and so does b: its send waits for the
    // new session.
    for i in 10..20 {
        a.send(i.to_string()).await.unwrap();
    }
    b.send("sent while away").await.unwrap();

    second.restart().await;
    assert!(matches!(event(&mut b).await, ChannelEvent::Connect { .. }));
    assert_eq!(b.reconnects(), 1);
    // b reads on after the last message it received: no duplicate, no gap.
    for i in 10..20 {
        assert_eq!(message(&mut b).await.1, i.to_string());
    }
    // a sees b come back, then what b sent while away.
    assert!(matches!(event(&mut a).await, ChannelEvent::RemoteConnect));
    assert_eq!(message(&mut a).await.1, "sent while away");
    b.disconnect().await.unwrap();
    a.disconnect().await.unwrap();
}

async fn a_session_gives_up_when_its_broker_stays_away() {
    let c = cluster().await;
    let bus = Bus::connect(c.broker.url())
        .await
        .unwrap()
        .reconnect(Reconnect {
            enabled: true,
            give_up_after: Duration::from_secs(1),
        });
    let mut session = bus.channel("gone").connect().await.unwrap();
    assert!(matches!(
        event(&mut session).await,
        ChannelEvent::Connect { .. }
    ));
    c.broker.kill9();
    assert!(matches!(
        event(&mut session).await,
        ChannelEvent::Reconnecting(_)
    ));
    // A send while reconnecting is taken, to go out on the new session.
    session.send("never stored").await.unwrap();
    match event(&mut session).await {
        ChannelEvent::Error(e) => assert!(e.is_unavailable(), "{e}"),
        other => panic!("expected the last error, got {other:?}"),
    }
    assert!(session.next().await.is_none(), "the session is over");
    assert_eq!(session.reconnects(), 0);
    // Then sends fail: the session's buffer is gone.
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(e) = session.send("too late").await {
                break e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("sends fail once the session is over");
    assert_eq!(refused.code(), ErrorCode::FailedPrecondition, "{refused}");
}

busmq_testkit::in_both_deployments!(
    two_cli_peers_exchange_ten_thousand_messages_each_way_in_order_whoever_connects_first,
    presence_and_end_events_reach_the_other_peer,
    explicit_roles_connect_both_ways,
    a_reliable_peer_that_dies_without_acking_gets_its_messages_again,
    send_to_reaches_an_endpoint_without_connecting,
    bad_input_gets_clear_errors,
    a_peer_that_reads_late_still_gets_everything_in_order,
    peers_on_two_brokers_of_one_store_talk,
    persistent_peers_read_everything_again_and_ttl_applies_to_both_queues,
    a_broker_shutting_down_disconnects_its_peers,
    a_reliable_cli_peer_acks_what_it_printed,
    an_end_waits_for_a_peer_that_was_not_there,
    sending_to_a_peer_that_ended_is_refused_before_its_end_is_read,
    a_persistent_session_resumes_where_it_was_after_its_broker_shut_down_and_came_back,
    a_session_gives_up_when_its_broker_stays_away,
);
