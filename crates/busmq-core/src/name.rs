//! Names of queues, pub/sub channels and persistable objects: validated
//! once at the edge, then trusted everywhere.
//!
//! All three follow the same rules, 1..=`max_name_len` bytes of
//! `[A-Za-z0-9._:-]`: the character set keeps names safe as store keys, URL
//! path segments and ZeroMQ topic prefixes without escaping. Each is its own
//! type, so a channel name cannot be passed where a queue is meant.

use std::fmt;
use std::sync::Arc;

use crate::{Error, Limits, Result};

/// What a name names, as errors report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameKind {
    /// A queue (also the queues behind a channel).
    Queue,
    /// A pub/sub channel.
    Channel,
    /// A persistable object.
    Object,
}

impl NameKind {
    /// The lowercase word used in messages and error metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            NameKind::Queue => "queue",
            NameKind::Channel => "channel",
            NameKind::Object => "object",
        }
    }

    /// The kind [`NameKind::as_str`] spells `word`, if any.
    pub fn parse(word: &str) -> Option<Self> {
        [NameKind::Queue, NameKind::Channel, NameKind::Object]
            .into_iter()
            .find(|k| k.as_str() == word)
    }
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `b` may appear in a name: `[A-Za-z0-9._:-]`.
pub(crate) fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

/// Checks `name` against the shared naming rules; `kind` names what it
/// names in the error.
fn validate(kind: NameKind, name: &str, limits: &Limits) -> Result<()> {
    let invalid = |reason: &str| {
        Err(Error::InvalidName {
            kind,
            name: name.chars().take(64).collect(),
            reason: reason.to_owned(),
        })
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > limits.max_name_len {
        return invalid("too long");
    }
    if !name.bytes().all(is_name_byte) {
        return invalid("only A-Z a-z 0-9 . _ : - are allowed");
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:expr) => {
        $(#[$doc])*
        ///
        /// Shared, not copied: a name travels with every change, wake-up
        /// and store call about its queue, so a clone costs a count.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(Arc<str>);

        impl $ty {
            /// Validates `name` against `limits`.
            pub fn parse(name: &str, limits: &Limits) -> Result<Self> {
                validate($kind, name, limits)?;
                Ok($ty(Arc::from(name)))
            }

            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A valid queue name: 1..=`max_name_len` bytes of `[A-Za-z0-9._:-]`.
    QueueName,
    NameKind::Queue
);

/// A map keyed by queue name, for the maps every push and take looks up.
///
/// std's default hasher (SipHash) is built to resist collision attacks at a
/// cost that showed in profiles with thousands of queues; foldhash is
/// several times faster on short keys and still seeded at random per map,
/// so names sent over the network cannot be chosen to collide.
pub type NameMap<V> = std::collections::HashMap<QueueName, V, foldhash::fast::RandomState>;

/// Appended to a queue's name to name its dead-letter queue.
pub const DEAD_LETTER_SUFFIX: &str = ".dlq";

impl QueueName {
    /// The queue that receives this queue's dead letters: the name with
    /// [`DEAD_LETTER_SUFFIX`] appended. Derived, so not checked against a
    /// length limit; callers that let users name it check it themselves.
    pub fn dead_letters(&self) -> QueueName {
        QueueName(Arc::from(format!("{}{DEAD_LETTER_SUFFIX}", self.0)))
    }
}

name_type!(
    /// A valid pub/sub channel name, with the rules of a [`QueueName`].
    ChannelName,
    NameKind::Channel
);

name_type!(
    /// A valid persistable object name, with the rules of a [`QueueName`].
    ObjectName,
    NameKind::Object
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        let l = Limits::default();
        assert!(QueueName::parse("orders.eu-1:v2_x", &l).is_ok());
        assert!(QueueName::parse("", &l).is_err());
        assert!(QueueName::parse("a b", &l).is_err());
        assert!(QueueName::parse("ü", &l).is_err());
        assert!(QueueName::parse(&"x".repeat(201), &l).is_err());
        assert!(QueueName::parse(&"x".repeat(200), &l).is_ok());
        let q = QueueName::parse("jobs", &l).unwrap();
        assert_eq!(q.dead_letters().as_str(), "jobs.dlq");
    }

    #[test]
    fn errors_say_what_kind_of_name() {
        let l = Limits::default();
        let err = ChannelName::parse("a b", &l).unwrap_err();
        assert!(err.to_string().starts_with("invalid channel name"), "{err}");
        let err = ObjectName::parse("", &l).unwrap_err();
        assert!(err.to_string().starts_with("invalid object name"), "{err}");
        assert!(ObjectName::parse("user:42", &l).is_ok());
    }
}
