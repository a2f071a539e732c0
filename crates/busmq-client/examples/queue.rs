//! node-busmq's README producer/consumer example, with the Rust SDK.
//!
//! Start a bus first (`busmq serve`), then:
//!
//! ```text
//! cargo run -p busmq-client --example queue            # http://127.0.0.1:50051
//! cargo run -p busmq-client --example queue -- URL     # another broker
//! ```
//!
//! The consumer attaches to queue `foo` and consumes until it sees
//! "my name if foo" (sic, as in node-busmq's README); the producer attaches
//! and pushes two messages. Both print their queue events.

use busmq_client::{AttachOptions, Bus, ConsumeOptions, DEFAULT_URL, Queue, QueueEvent};
use futures::StreamExt;

const LAST: &str = "my name if foo";

#[tokio::main]
async fn main() -> Result<(), busmq_client::Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let bus = Bus::connect(&url).await?;
    println!("connected to {}", bus.url());

    // Consumer: like `q.on('message', ...)` in node-busmq.
    let consumer_queue = bus.queue("foo");
    log_events("consumer", &consumer_queue);
    let existed = consumer_queue.attach(AttachOptions::default()).await?;
    println!(
        "consumer: attached to queue (existed: {existed}). messages will soon start flowing in..."
    );
    let mut consumer = consumer_queue.consume(ConsumeOptions::default()).await?;
    let consuming = tokio::spawn(async move {
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            let text = String::from_utf8_lossy(&delivery.payload);
            println!("consumer: message {}: {text}", delivery.id);
            if text == LAST {
                break;
            }
        }
        consumer.stop();
        Ok::<_, busmq_client::Error>(())
    });

    // Producer: the same queue through its own handle, as another process
    // would.
    let producer_queue = bus.queue("foo");
    producer_queue.attach(AttachOptions::default()).await?;
    println!("producer: attached to queue");
    let first = producer_queue.push(r#"{"hello":"world"}"#).await?;
    let second = producer_queue.push(LAST).await?;
    println!("producer: pushed messages {first} and {second}");
    producer_queue.detach().await?;

    consuming.await.expect("the consumer task does not panic")?;
    consumer_queue.detach().await?;
    println!(
        "done: producer pushed {}, consumer consumed {}",
        producer_queue.pushed(),
        consumer_queue.consumed()
    );
    Ok(())
}

/// Prints a queue handle's events as they happen.
fn log_events(who: &'static str, queue: &Queue) {
    let mut events = queue.events();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                QueueEvent::Message { .. } => {}
                other => println!("{who}: event {other:?}"),
            }
        }
    });
}
