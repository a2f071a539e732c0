//! `busmq`: run the whole bus in one process (`busmq serve`), or talk to a
//! running one (`busmq push`, `busmq consume`, `busmq lease`, `busmq channel`,
//! `busmq stats`, `busmq publish`, `busmq subscribe`, `busmq object get|set`).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// See [`busmq_server::Allocator`].
#[global_allocator]
static ALLOCATOR: busmq_server::Allocator = busmq_server::ALLOCATOR;

mod channel;
mod client;
mod health;
mod lease;
mod listing;
mod object;
mod output;
mod pubsub;
mod serve;

/// busmq: a message bus with ordered queues, reliable and persistent
/// consumption, served over gRPC.
///
/// Start a bus with `busmq serve`, then push and consume with the other
/// commands (or any gRPC client of busmq.v1). Every flag can also be set
/// through the environment variable shown in its help.
#[derive(Debug, Parser)]
#[command(name = "busmq", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Serve(ServeArgs),
    Push(PushArgs),
    Consume(ConsumeArgs),
    Lease(lease::LeaseArgs),
    Channel(channel::ChannelArgs),
    Stats(StatsArgs),
    Queues(listing::QueuesArgs),
    Channels(listing::ChannelsArgs),
    Publish(PublishArgs),
    Subscribe(SubscribeArgs),
    Health(health::HealthArgs),
    #[command(subcommand)]
    Object(ObjectCommand),
    // Only with the default `bench` feature; its help is BenchArgs' own.
    #[cfg(feature = "bench")]
    Bench(busmq_bench::BenchArgs),
}

/// Publish one message on a pub/sub channel and print how many subscribers
/// received it.
///
/// Pub/sub is not stored: only the subscribers of the moment (on every
/// broker of the bus) receive the message; with none, it is gone and 0 is
/// printed.
#[derive(Debug, Args)]
struct PublishArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The channel: 1..=200 characters of A-Z a-z 0-9 . _ : -
    channel: String,
    /// The message.
    message: String,
}

/// Subscribe to a pub/sub channel and print each message on its own line.
///
/// Prints "busmq: subscribed to CHANNEL" on standard error once the
/// subscription is in place (every later publish reaches it), then runs
/// until --count messages were printed or Ctrl-C. Backslash, newline,
/// carriage return and tab in a message are printed as \\, \n, \r and \t
/// (see --raw). Messages dropped because this process did not keep up are
/// reported on standard error.
#[derive(Debug, Args)]
struct SubscribeArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Stop after this many messages.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Print messages exactly as they are, without escaping.
    #[arg(long)]
    raw: bool,
    /// The channel to subscribe to.
    channel: String,
}

/// Read or write a persistable object (named fields holding JSON values).
#[derive(Debug, Subcommand)]
enum ObjectCommand {
    Get(ObjectGetArgs),
    Set(ObjectSetArgs),
}

/// Print every field of an object as one JSON object.
///
/// Fails (exit status 1) when the object does not exist.
#[derive(Debug, Args)]
struct ObjectGetArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The object: 1..=200 characters of A-Z a-z 0-9 . _ : -
    name: String,
}

/// Set one field of an object to a JSON value, creating the object if
/// needed; its other fields stay as they are.
///
/// The value must be JSON: `42`, `true`, `'{"a":1}'`, and a string in
/// quotes, `'"text"'`.
#[derive(Debug, Args)]
struct ObjectSetArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Make the object expire this many seconds after this save. Unset: its
    /// expiry stays as it was (a new object never expires).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=busmq_core::MAX_TTL.as_secs()))]
    ttl: Option<u64>,
    /// The object.
    name: String,
    /// The field.
    field: String,
    /// The value, as JSON text.
    json: String,
}

/// Run every busmq service in this process: storage and broker.
///
/// By default queues are kept durably in --data-dir (./busmq-data): a push,
/// ack or take acknowledged to a client is on disk (fsync'd) and survives a
/// restart, a crash or `kill -9`; concurrent operations share one disk
/// commit. Only one process at a time may use a data directory.
/// `--backend memory` keeps everything in memory instead (lost on exit). To
/// share a store between several brokers, run `busmq-storage` and
/// `busmq-broker` separately.
///
/// Listens on two ports: the broker (busmq.v1, what clients use) and the
/// storage service (busmq.storage.v1, for extra `busmq-broker` processes),
/// both sharing the one store. Each also serves gRPC health and reflection.
/// Stops on SIGTERM or Ctrl-C, letting in-flight calls finish for up to 10
/// seconds.
#[derive(Debug, Args)]
struct ServeArgs {
    /// Address of the broker gRPC API (busmq.v1), the one clients use.
    #[arg(long, env = "BUSMQ_BROKER_LISTEN", default_value = "0.0.0.0:50051")]
    listen: SocketAddr,
    /// Address of the storage gRPC API (busmq.storage.v1), for brokers
    /// running in other processes (`busmq-broker --storage http://HOST:PORT`).
    #[arg(long, env = "BUSMQ_STORAGE_LISTEN", default_value = "0.0.0.0:50052")]
    storage_listen: SocketAddr,
    /// Where queues live: `embedded` (durable, in --data-dir) or `memory`
    /// (lost on exit).
    /// `--storage` is an older name of this flag.
    #[arg(
        long = "backend",
        alias = "storage",
        env = "BUSMQ_BACKEND",
        default_value = "embedded"
    )]
    storage: busmq_storage_server::BackendSpec,
    /// Directory of the embedded store, created if missing.
    #[arg(long, env = "BUSMQ_DATA_DIR", default_value = busmq_storage_server::DEFAULT_DATA_DIR)]
    data_dir: std::path::PathBuf,
    #[command(flatten)]
    limits: busmq_server::LimitsArgs,
    /// Messages in flight to a consumer that names no prefetch.
    #[arg(long, env = "BUSMQ_PREFETCH", default_value_t = busmq_broker::BrokerConfig::default().default_prefetch)]
    prefetch: u32,
    /// Milliseconds a reliable consumer's lock outlives a broker that
    /// stopped renewing it.
    #[arg(long, env = "BUSMQ_RELIABLE_LEASE_MS", default_value_t = 5000)]
    reliable_lease_ms: u64,
    /// Address of the HTTP gateway (the message-queue API, /v1, /info),
    /// run in this process over the broker above; `off` for none.
    #[arg(long, env = "BUSMQ_HTTP_LISTEN", default_value = "0.0.0.0:3000")]
    http_listen: busmq_http::HttpListen,
    #[command(flatten)]
    http: busmq_http::GatewayArgs,
    /// One admin port for every service of the process.
    #[command(flatten)]
    metrics: busmq_server::metrics::MetricsArgs,
    /// Log lines as `text` or `json` (one object per line); `RUST_LOG`
    /// filters them.
    #[arg(long, env = "BUSMQ_LOG_FORMAT", value_enum, default_value_t)]
    log_format: busmq_server::LogFormat,
}

/// Where the client commands find the bus.
#[derive(Debug, Args)]
struct ServerArgs {
    /// URL of the broker (busmq.v1 gRPC).
    #[arg(long, env = "BUSMQ_SERVER", default_value = busmq_client::DEFAULT_URL)]
    pub(crate) server: String,
}

/// How the client commands attach to their queue.
#[derive(Debug, Args)]
struct AttachArgs {
    /// Seconds the queue lives with no attachments. Unset: an existing queue
    /// keeps its ttl, a new one gets the server default, 30.
    #[arg(long, env = "BUSMQ_TTL", value_parser = clap::value_parser!(u64).range(1..=busmq_core::MAX_TTL.as_secs()))]
    pub(crate) ttl: Option<u64>,
}

/// Push messages to a queue and print their ids, one per line.
///
/// Attaches to the queue (creating it if needed), pushes the messages in one
/// batch, and detaches. With no other client attached, the queue and its
/// messages then expire after its ttl, so consume within that time (or keep
/// a consumer attached).
///
/// With no MSG, pushes each line of standard input as one message.
#[derive(Debug, Args)]
struct PushArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    attach: AttachArgs,
    /// The queue: 1..=200 characters of A-Z a-z 0-9 . _ : -
    queue: String,
    /// The messages, in order. None: read lines from standard input.
    #[arg(value_name = "MSG")]
    messages: Vec<String>,
}

/// Consume messages from a queue and print them as `ID<TAB>PAYLOAD` lines.
///
/// Attaches to the queue (creating it if needed) and consumes until --max
/// messages were printed, the queue is closed or expires, or Ctrl-C. In the
/// payload, backslash, newline, carriage return and tab are printed as \\,
/// \n, \r and \t so each message stays on one line (see --raw).
///
/// Modes, as in node-busmq: the default takes each message from the queue
/// for good (at most once, shared with other consumers); --reliable keeps
/// taken messages until acked and acks them after printing them, so a
/// consumer killed before printing gets them again next time (at least
/// once; one reliable consumer per queue); --persistent reads every message
/// from --index on without removing anything (publish/subscribe).
/// How a queue (or a channel's inbound queue) is consumed; unreliable
/// unless a flag says otherwise.
#[derive(Debug, Args)]
struct ModeArgs {
    /// Reliable mode: at least once, each message acked after it is printed.
    #[arg(long, conflicts_with = "persistent")]
    reliable: bool,
    /// Reliable mode: id of the last message already handled; messages up to
    /// it are discarded first.
    #[arg(long, requires = "reliable", value_name = "ID")]
    last: Option<u64>,
    /// Persistent publish/subscribe: read without removing anything.
    #[arg(long)]
    persistent: bool,
    /// Persistent mode: first message id to read (default: the oldest
    /// stored).
    #[arg(long, requires = "persistent", value_name = "ID")]
    index: Option<u64>,
}

impl ModeArgs {
    /// The consume options these flags select, with no limit.
    fn options(&self) -> busmq_client::ConsumeOptions {
        busmq_client::ConsumeOptions {
            remove: !self.persistent,
            reliable: self.reliable,
            last: self.last,
            index: self.index,
            ..busmq_client::ConsumeOptions::default()
        }
    }
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    attach: AttachArgs,
    #[command(flatten)]
    mode: ModeArgs,
    /// Stop after this many messages.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max: Option<u64>,
    /// Messages the server may send ahead of printing (server default: 256).
    /// In the default mode, messages sent ahead are lost if this process is
    /// killed.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    prefetch: Option<u32>,
    /// Print payloads exactly as they are, without escaping.
    #[arg(long)]
    raw: bool,
    /// The queue to consume.
    queue: String,
}

/// Print what the bus knows about a queue: existence, message count, ttl,
/// attachments, pending acks, ids and counters.
///
/// Does not attach, so it neither creates the queue nor keeps it alive.
#[derive(Debug, Args)]
struct StatsArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Print one JSON object instead of aligned text.
    #[arg(long)]
    json: bool,
    /// The queue to describe.
    queue: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Serve(args) => busmq_server::init_tracing_as(args.log_format),
        _ => busmq_server::init_tracing(),
    }
    let result = match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Push(args) => client::push(args).await,
        Command::Consume(args) => client::consume(args).await,
        Command::Lease(args) => lease::run(args).await,
        Command::Channel(args) => channel::run(args).await,
        Command::Stats(args) => client::stats(args).await,
        Command::Queues(args) => listing::queues(args).await,
        Command::Channels(args) => listing::channels(args).await,
        Command::Publish(args) => pubsub::publish(args).await,
        Command::Subscribe(args) => pubsub::subscribe(args).await,
        Command::Health(args) => health::run(args).await,
        Command::Object(ObjectCommand::Get(args)) => object::get(args).await,
        Command::Object(ObjectCommand::Set(args)) => object::set(args).await,
        #[cfg(feature = "bench")]
        Command::Bench(args) => busmq_bench::run(args).await.map(drop),
    };
    busmq_server::flush_tracing().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("busmq: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("busmq").chain(args.iter().copied()))
    }

    #[test]
    fn serve_defaults() {
        let Command::Serve(args) = parse(&["serve"]).unwrap().command else {
            panic!("not serve");
        };
        assert_eq!(args.listen.port(), 50051);
        assert_eq!(args.storage_listen.port(), 50052);
        assert_eq!(args.limits.limits().max_message_bytes, 1024 * 1024);
        assert_eq!(args.storage, busmq_storage_server::BackendSpec::Embedded);
        assert_eq!(args.data_dir, std::path::PathBuf::from("./busmq-data"));
        let Command::Serve(args) = parse(&["serve", "--backend", "memory"]).unwrap().command else {
            panic!("not serve");
        };
        assert_eq!(args.storage, busmq_storage_server::BackendSpec::Memory);
    }

    #[test]
    fn consume_mode_flags() {
        let Command::Consume(args) =
            parse(&["consume", "q", "--reliable", "--last", "3", "--max", "2"])
                .unwrap()
                .command
        else {
            panic!("not consume");
        };
        assert!(args.mode.reliable && !args.mode.persistent);
        assert_eq!((args.mode.last, args.max), (Some(3), Some(2)));
        assert_eq!(args.server.server, busmq_client::DEFAULT_URL);

        assert!(parse(&["consume", "q", "--persistent", "--index", "5"]).is_ok());
        assert!(parse(&["consume", "q", "--reliable", "--persistent"]).is_err());
        assert!(parse(&["consume", "q", "--last", "3"]).is_err());
        assert!(parse(&["consume", "q", "--index", "3"]).is_err());
        assert!(parse(&["consume", "q", "--max", "0"]).is_err());
    }

    #[test]
    fn channel_flags() {
        let Command::Channel(_) = parse(&["channel", "c", "--listen", "--reliable", "--last", "3"])
            .unwrap()
            .command
        else {
            panic!("not channel");
        };
        assert!(parse(&["channel", "c", "--connect", "--local", "server"]).is_ok());
        assert!(parse(&["channel", "c", "--send-to", "local"]).is_ok());
        assert!(parse(&["channel", "c", "--listen", "--connect"]).is_err());
        assert!(parse(&["channel", "c", "--listen", "--send-to", "local"]).is_err());
        assert!(parse(&["channel", "c", "--send-to", "local", "--end"]).is_err());
        assert!(parse(&["channel", "c", "--connect", "--last", "3"]).is_err());
        assert!(
            parse(&["channel", "--connect"]).is_err(),
            "the name is required"
        );
    }

    #[test]
    fn lease_subcommands() {
        let Command::Lease(args) = parse(&["lease", "take", "q", "--max", "2"])
            .unwrap()
            .command
        else {
            panic!("not lease");
        };
        assert!(matches!(args.command, lease::LeaseCommand::Take(_)));
        assert!(parse(&["lease", "ack", "q", "3", "1"]).is_ok());
        assert!(parse(&["lease", "nack", "q", "3", "1"]).is_ok());
        assert!(
            parse(&["lease", "ack", "q", "3"]).is_err(),
            "the attempt is required"
        );
        assert!(parse(&["lease", "take", "q", "--visibility-ms", "0"]).is_err());
        assert!(parse(&["lease", "take", "q", "--max", "0"]).is_err());
    }

    #[test]
    fn pubsub_and_object_commands() {
        let Command::Subscribe(args) = parse(&["subscribe", "news", "--count", "3"])
            .unwrap()
            .command
        else {
            panic!("not subscribe");
        };
        assert_eq!((args.channel.as_str(), args.count), ("news", Some(3)));
        assert!(parse(&["subscribe", "news", "--count", "0"]).is_err());
        assert!(parse(&["publish", "news", "hello"]).is_ok());
        assert!(parse(&["publish", "news"]).is_err());
        let Command::Object(ObjectCommand::Set(args)) =
            parse(&["object", "set", "obj", "foo", "1", "--ttl", "30"])
                .unwrap()
                .command
        else {
            panic!("not object set");
        };
        assert_eq!(
            (args.name.as_str(), args.field.as_str(), args.json.as_str()),
            ("obj", "foo", "1")
        );
        assert_eq!(args.ttl, Some(30));
        assert!(parse(&["object", "set", "obj", "foo", "1", "--ttl", "0"]).is_err());
        let past_ceiling = (busmq_core::MAX_TTL.as_secs() + 1).to_string();
        assert!(parse(&["object", "set", "obj", "foo", "1", "--ttl", &past_ceiling]).is_err());
        assert!(parse(&["push", "q", "a", "--ttl", &past_ceiling]).is_err());
        assert!(parse(&["object", "get", "obj"]).is_ok());
        assert!(parse(&["object", "get"]).is_err());
    }

    #[test]
    fn push_takes_messages_or_none() {
        let Command::Push(args) = parse(&["push", "q", "a", "b", "--ttl", "60"])
            .unwrap()
            .command
        else {
            panic!("not push");
        };
        assert_eq!(args.messages, vec!["a", "b"]);
        assert_eq!(args.attach.ttl, Some(60));
        assert!(parse(&["push", "q"]).is_ok());
        assert!(parse(&["push"]).is_err());
        assert!(parse(&["push", "q", "--ttl", "0"]).is_err());
    }
}
