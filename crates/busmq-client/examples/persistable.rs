//! node-busmq's README persistable example, with the Rust SDK.
//!
//! Start a bus first (`busmq serve`), then:
//!
//! ```text
//! cargo run -p busmq-client --example persistable            # http://127.0.0.1:50051
//! cargo run -p busmq-client --example persistable -- URL     # another broker
//! ```
//!
//! Sets three fields of object `obj` and saves them, changes one and saves
//! again (only that one is written), loads the object through a second
//! handle, then keeps it alive with `persist` and lets it go with
//! `unpersist` (it expires 5 seconds after the last touch).

use std::time::Duration;

use busmq_client::{Bus, DEFAULT_URL};

#[tokio::main]
async fn main() -> Result<(), busmq_client::Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let bus = Bus::connect(&url).await?;
    println!("connected to {}", bus.url());

    let mut p = bus.persistable("obj");
    p.set("foo", "hello");
    p.set("bar", 1);
    p.set("zoo", true);
    println!("dirty: {:?}", p.dirty().collect::<Vec<_>>());
    p.save().await?;
    println!("foo, bar and zoo have been saved");

    p.set("foo", "world");
    println!("dirty: {:?}", p.dirty().collect::<Vec<_>>());
    p.save().await?;
    println!("only foo has been saved");

    // Load the persisted fields through another handle.
    let mut p2 = bus.persistable("obj");
    let loaded = p2.load().await?;
    println!("loaded {}: exists == {}", loaded.id, loaded.exists);
    for (field, value) in p2.fields() {
        println!("  p2.{field} == {value}");
    }

    // Keep the object alive for as long as this process wants it...
    p.persist(Duration::from_secs(5)).await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let still = bus.persistable("obj").load().await?.exists;
    println!("after 6 s of persisting with a 5 s ttl: exists == {still}");
    // ...then let it expire 5 seconds after the last touch.
    p.unpersist();
    println!("unpersisted: the object expires within 5 s");
    Ok(())
}
