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

/// The `SCAN MATCH` pattern of the meta keys of queues whose name may
/// contain `contains` (every queue's with `None`). Name characters are no
/// glob metacharacters, so `contains` needs no escaping; a match may still
/// be a queue whose dead-letter placement holds the text, so callers check
/// the name itself ([`queue_of_meta`]).
pub(super) fn meta_pattern(contains: Option<&str>) -> String {
    match contains {
        Some(text) => format!("{KEY_PREFIX}:{{*{text}*:meta"),
        None => format!("{KEY_PREFIX}:{{*:meta"),
    }
}

/// The queue name a meta key ([`keys`]`[0]`) belongs to, or `None` for
/// any other key.
pub(super) fn queue_of_meta(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?.strip_prefix(":{")?;
    let (place, rest) = rest.split_once('}')?;
    match rest {
        ":meta" => Some(place),
        _ => rest.strip_prefix(':')?.strip_suffix(":meta"),
    }
}

/// The Redis channels of every busmq pub/sub channel whose name may contain
/// `contains`, as a `PUBSUB CHANNELS` pattern.
pub(super) fn pubsub_pattern(contains: Option<&str>) -> String {
    match contains {
        Some(text) => format!("{PUBSUB_PREFIX}*{text}*"),
        None => format!("{PUBSUB_PREFIX}*"),
    }
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
        for name in [&q, &q.dead_letters().dead_letters()] {
            assert_eq!(queue_of_meta(&keys(name)[0]), Some(name.as_str()));
            assert_eq!(queue_of_meta(&keys(name)[1]), None, "not a meta key");
        }
        assert_eq!(meta_pattern(Some("eu")), "busmq:{*eu*:meta");
        assert_eq!(queue_of_meta("busmq:obj:{x:meta}"), None);
        let odd = QueueName::parse(".dlq", &Limits::default()).unwrap();
        assert_eq!(placement(&odd), ".dlq");
    }
}
