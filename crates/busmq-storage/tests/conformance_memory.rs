//! The conformance suite over the in-memory store.

use std::sync::Arc;

use busmq_storage::Storage;
use busmq_storage::memory::MemoryStorage;

busmq_storage::conformance_tests!(async { Arc::new(MemoryStorage::new()) as Arc<dyn Storage> });
