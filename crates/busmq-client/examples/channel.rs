//! node-busmq's README channel example (default roles), with the Rust SDK.
//!
//! Start a bus first (`busmq serve`), then:
//!
//! ```text
//! cargo run -p busmq-client --example channel            # http://127.0.0.1:50051
//! cargo run -p busmq-client --example channel -- URL     # another broker
//! ```
//!
//! A server peer listens on channel `bar` and a client peer connects to it,
//! each on its own task as two processes would. When either sees the other
//! connect (`remote:connect`) it says hello; the client ends the channel
//! once it got its answer, and both see `end`. The explicit roles of
//! node-busmq's second example (`bus.channel('zoo', 'server', 'client')`)
//! are [`Bus::channel_with_roles`], both peers calling `connect`.

use busmq_client::{Bus, ChannelEvent, ChannelSession, DEFAULT_URL};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), busmq_client::Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let bus = Bus::connect(&url).await?;
    println!("connected to {}", bus.url());

    // Server endpoint: `c.listen()` reverses the roles.
    let server = bus.channel("bar").listen().await?;
    let server = tokio::spawn(run("server", server, "hello client!", false));

    // Client endpoint: `c.connect()`.
    let client = bus.channel("bar").connect().await?;
    let client = tokio::spawn(run("client", client, "hello server!", true));

    for peer in [client, server] {
        peer.await.expect("a peer task panicked")?;
    }
    Ok(())
}

/// One peer: prints its events, greets the other side once it connects,
/// and (if `ends`) ends the channel after the first message it receives.
async fn run(
    who: &str,
    mut channel: ChannelSession,
    greeting: &str,
    ends: bool,
) -> Result<(), busmq_client::Error> {
    while let Some(event) = channel.next().await {
        match event {
            ChannelEvent::Connect { .. } => println!("{who}: connected to the channel"),
            ChannelEvent::RemoteConnect => {
                println!("{who}: the other peer is connected to the channel");
                channel.send(greeting.to_owned()).await?;
            }
            ChannelEvent::Message { payload, .. } => {
                println!("{who}: received {:?}", String::from_utf8_lossy(&payload));
                if ends {
                    channel.end().await?;
                }
            }
            ChannelEvent::RemoteDisconnect => println!("{who}: the other peer disconnected"),
            ChannelEvent::End { by_self } => {
                println!(
                    "{who}: channel ended (by {})",
                    if by_self { "me" } else { "the other peer" }
                );
                break;
            }
            ChannelEvent::Error(e) => return Err(e),
            _ => {}
        }
    }
    channel.disconnect().await
}
