//! The limit flags every busmq server takes, so that `busmq serve`, the
//! broker and the storage service accept the same names, types and
//! environment variables.

use std::num::NonZeroUsize;

use busmq_core::Limits;
use clap::Args;

/// `--max-message-bytes`, `--max-batch` and `--max-name-len`, flattened
/// into a server's own flags.
#[derive(Debug, Clone, Args)]
pub struct LimitsArgs {
    /// Largest message body in bytes.
    #[arg(long, env = "BUSMQ_MAX_MESSAGE_BYTES", default_value_t = nonzero(Limits::default().max_message_bytes))]
    pub max_message_bytes: NonZeroUsize,
    /// Most messages in one push batch.
    #[arg(long, env = "BUSMQ_MAX_BATCH", default_value_t = nonzero(Limits::default().max_batch_len))]
    pub max_batch: NonZeroUsize,
    /// Longest queue, channel or object name in bytes.
    #[arg(long, env = "BUSMQ_MAX_NAME_LEN", default_value_t = nonzero(Limits::default().max_name_len))]
    pub max_name_len: NonZeroUsize,
}

impl LimitsArgs {
    /// The limits these flags name.
    pub fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes.get(),
            max_batch_len: self.max_batch.get(),
            max_name_len: self.max_name_len.get(),
        }
    }
}

fn nonzero(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).expect("default limits are above zero")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Server {
        #[command(flatten)]
        limits: LimitsArgs,
    }

    #[test]
    fn defaults_are_the_core_defaults() {
        let server = Server::try_parse_from(["server"]).unwrap();
        assert_eq!(server.limits.limits(), Limits::default());
    }

    #[test]
    fn every_limit_is_a_flag_and_zero_is_refused() {
        let server = Server::try_parse_from([
            "server",
            "--max-message-bytes",
            "10",
            "--max-batch",
            "2",
            "--max-name-len",
            "5",
        ])
        .unwrap();
        let limits = server.limits.limits();
        assert_eq!(
            (
                limits.max_message_bytes,
                limits.max_batch_len,
                limits.max_name_len
            ),
            (10, 2, 5)
        );
        for flag in ["--max-message-bytes", "--max-batch", "--max-name-len"] {
            assert!(
                Server::try_parse_from(["server", flag, "0"]).is_err(),
                "{flag} 0"
            );
        }
    }
}
