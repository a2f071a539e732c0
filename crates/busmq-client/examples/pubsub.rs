//! node-busmq's README publish/subscribe example, with the Rust SDK.
//!
//! Start a bus first (`busmq serve`), then:
//!
//! ```text
//! cargo run -p busmq-client --example pubsub            # http://127.0.0.1:50051
//! cargo run -p busmq-client --example pubsub -- URL     # another broker
//! ```
//!
//! A subscriber subscribes to `my-pubsub-channel` (node-busmq's example
//! used spaces in the name, which busmq names do not allow) and prints
//! what it receives; a publisher publishes "hello world" through its own
//! handle and prints how many subscribers received it. Pub/sub is not
//! stored: a message published before the subscription is in place is not
//! received.

use busmq_client::{Bus, DEFAULT_URL, PubSubEvent};
use futures::StreamExt;

const CHANNEL: &str = "my-pubsub-channel";

#[tokio::main]
async fn main() -> Result<(), busmq_client::Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let bus = Bus::connect(&url).await?;
    println!("connected to {}", bus.url());

    // Subscriber: like `s.on('message', ...)` then `s.subscribe()`.
    let s = bus.pubsub(CHANNEL);
    let mut events = s.events();
    s.subscribe().await?;
    let subscriber = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                PubSubEvent::Message(message) => {
                    println!(
                        "subscriber: received {:?}",
                        String::from_utf8_lossy(&message)
                    );
                    return;
                }
                other => println!("subscriber: event {other:?}"),
            }
        }
    });

    // Publisher: its own handle on the same channel, as another process
    // would have.
    let p = bus.pubsub(CHANNEL);
    let receivers = p.publish("hello world").await?;
    println!("publisher: published to {receivers} subscriber(s)");

    subscriber
        .await
        .expect("the subscriber task does not panic");
    s.unsubscribe();
    println!("subscribed: {}", s.is_subscribed());
    Ok(())
}
