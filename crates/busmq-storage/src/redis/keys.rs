//! Where a queue's keys are: every key of a queue shares the hash tag of
//! its placement, so one script can reach all of them on a Cluster.

use busmq_core::DEAD_LETTER_SUFFIX;

use super::{KEY_PREFIX, PUBSUB_PREFIX};
use crate::{ChannelName, ObjectName, QueueName};

/// What decides where a queue lives (hash slot and shard): its name
/// without any dead-letter suffix, so a queue and its dead-letter queue
/// (and that one's) share a slot and a shard, and a script moves a message
/// between them atomically.
pub(super) fn placement(queue: &QueueName) -> &str {
    let mut name = queue.as_str();
    while let Some(base) = name.strip_suffix(DEAD_LETTER_SUFFIX)
        && !base.is_empty()
    {
        name = base;
    }
    name
}

pub(super) fn keys(queue: &QueueName) -> [String; 8] {
    let place = placement(queue);
    let base = if place == queue.as_str() {
        format!("{KEY_PREFIX}:{{{queue}}}")
    } else {
        format!("{KEY_PREFIX}:{{{place}}}:{queue}")
    };
    [
        format!("{base}:meta"),
        format!("{base}:ready"),
        format!("{base}:pending"),
        format!("{base}:md"),
        format!("{base}:lock"),
        format!("{base}:leases"),
        format!("{base}:deadlines"),
        format!("{base}:counts"),
    ]
}

/// The hash of a persistable object.
pub(super) fn object_key(object: &ObjectName) -> String {
    format!("{KEY_PREFIX}:obj:{{{object}}}")
}

/// The Redis channel of a pub/sub channel.
pub(super) fn pubsub_channel(channel: &ChannelName) -> String {
    format!("{PUBSUB_PREFIX}{channel}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use busmq_core::Limits;

    #[test]
    fn keys_share_a_hash_tag() {
        let q = QueueName::parse("orders.eu:1", &Limits::default()).unwrap();
        let k = keys(&q);
        assert_eq!(k[0], "busmq:{orders.eu:1}:meta");
        assert!(k.iter().all(|k| k.contains("{orders.eu:1}")));
        let dlq = keys(&q.dead_letters().dead_letters());
        assert_eq!(dlq[0], "busmq:{orders.eu:1}:orders.eu:1.dlq.dlq:meta");
        let odd = QueueName::parse(".dlq", &Limits::default()).unwrap();
        assert_eq!(placement(&odd), ".dlq");
    }
}
