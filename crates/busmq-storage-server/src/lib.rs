//! Choosing a store from configuration (`memory`, `embedded` or Redis URLs)
//! and opening it: the one crate that links every backend. The
//! `busmq-storage` binary, `busmq serve` and `busmq bench` open their store
//! through here; a broker never does, so it links neither SQLite nor Redis.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use busmq_storage::embedded::EmbeddedStorage;
use busmq_storage::memory::MemoryStorage;
use busmq_storage::redis::{RedisConfig, RedisStorage};
use busmq_storage::{Error, Result, Storage};

/// Where default embedded data lives, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./busmq-data";

/// Which store to open, as written in `--storage` / `--backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// In memory: fast, lost when the process stops.
    Memory,
    /// Durable, in [`BackendOptions::data_dir`] on this machine: what was
    /// acknowledged survives a restart or a crash.
    Embedded,
    /// Redis: `redis://`, `rediss://`, a comma-separated list of URLs
    /// (shards), `redis+sentinel://` or `redis+cluster://`; see
    /// [`busmq_storage::redis`].
    Redis(Box<RedisConfig>),
}

impl FromStr for BackendSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "memory" => Ok(BackendSpec::Memory),
            "embedded" => Ok(BackendSpec::Embedded),
            spec if busmq_storage::redis::is_redis_spec(spec) => {
                Ok(BackendSpec::Redis(Box::new(RedisConfig::parse(spec)?)))
            }
            other => Err(Error::InvalidArgument(format!(
                "unknown storage backend {other:?}: expected `embedded`, `memory` or a Redis URL (redis://, rediss://, redis+sentinel://, redis+cluster://)"
            ))),
        }
    }
}

/// Everything besides the spec that opening a store may need.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
        }
    }
}

/// Opens the store `spec` names.
pub async fn open(spec: &BackendSpec, options: &BackendOptions) -> Result<Arc<dyn Storage>> {
    match spec {
        BackendSpec::Memory => Ok(Arc::new(MemoryStorage::new())),
        BackendSpec::Embedded => {
            // Recovery reads the whole store from disk: off the runtime.
            let dir = options.data_dir.clone();
            let store = tokio::task::spawn_blocking(move || EmbeddedStorage::open(dir))
                .await
                .map_err(|e| Error::Internal(format!("opening the embedded store: {e}")))??;
            Ok(Arc::new(store))
        }
        // Connects in the background: an unreachable Redis is retried, and
        // reported through `Storage::ready`, not an error here.
        BackendSpec::Redis(config) => Ok(Arc::new(RedisStorage::new((**config).clone())?)),
    }
}
