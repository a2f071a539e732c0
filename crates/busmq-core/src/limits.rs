//! Limits on what a client may send, with safe defaults.

use crate::{Error, Result};

/// Size and count limits enforced at every entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message body in bytes.
    pub max_message_bytes: usize,
    /// Most messages in one push batch.
    pub max_batch_len: usize,
    /// Longest queue name in bytes.
    pub max_name_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1024 * 1024,
            max_batch_len: 10_000,
            max_name_len: 200,
        }
    }
}

impl Limits {
    /// Checks a push batch against the limits.
    pub fn check_batch<B: AsRef<[u8]>>(&self, batch: &[B]) -> Result<()> {
        self.check_batch_len(batch.len())?;
        if let Some(big) = batch
            .iter()
            .map(|m| m.as_ref().len())
            .find(|&len| len > self.max_message_bytes)
        {
            return Err(Error::MessageTooLarge {
                size: big,
                limit: self.max_message_bytes,
            });
        }
        Ok(())
    }

    /// Checks the number of messages of a push batch, before the batch is
    /// taken apart.
    pub fn check_batch_len(&self, count: usize) -> Result<()> {
        if count == 0 {
            return Err(Error::EmptyBatch);
        }
        if count > self.max_batch_len {
            return Err(Error::BatchTooLarge {
                count,
                limit: self.max_batch_len,
            });
        }
        Ok(())
    }

    /// The largest gRPC request a server must accept to honour these limits.
    pub fn max_request_bytes(&self) -> usize {
        // One full-size message per batch slot would be absurd (10 GiB); cap
        // a request at 64 full messages' worth, and never below 4 MiB.
        (self.max_message_bytes.saturating_mul(64)).clamp(4 << 20, 256 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_checks() {
        let limits = Limits {
            max_message_bytes: 4,
            max_batch_len: 2,
            max_name_len: 10,
        };
        let empty: [&[u8]; 0] = [];
        assert_eq!(limits.check_batch(&empty), Err(Error::EmptyBatch));
        assert!(limits.check_batch(&[b"abcd"]).is_ok());
        assert!(matches!(
            limits.check_batch(&[b"abcde".as_slice()]),
            Err(Error::MessageTooLarge { size: 5, limit: 4 })
        ));
        assert!(matches!(
            limits.check_batch(&[b"a", b"b", b"c"]),
            Err(Error::BatchTooLarge { count: 3, limit: 2 })
        ));
    }
}
