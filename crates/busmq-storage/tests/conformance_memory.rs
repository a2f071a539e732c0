//! The conformance suite over the in-memory store.

use std::sync::Arc;

use busmq_storage::Storage;
use busmq_storage::memory::MemoryStorage;

// Paused time: every ttl, lease and lock lapse of the suite passes in
// virtual time.
busmq_storage::conformance_tests!(paused; async {
    Arc::new(MemoryStorage::new()) as Arc<dyn Storage>
});
