//! The conformance suite over the embedded durable store, each test in its
//! own temporary directory (removed when the test's store is dropped).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use busmq_storage::embedded::EmbeddedStorage;
use busmq_storage::{
    Attached, ChannelFilter, ChannelName, ChannelPage, IdRange, LeaseToken, Leases, Message,
    Notifications, ObjectFields, ObjectName, QueueFilter, QueueInfo, QueueName, QueuePage,
    ReliableLock, Result, Settled, Settlement, Storage, Subscription, TakeMode, TakeRequest, Taken,
};

/// A store in a fresh directory that lives as long as the store: the
/// directory is removed when the last handle goes.
struct InTempDir {
    store: EmbeddedStorage,
    _dir: tempfile::TempDir,
}

async fn open() -> Arc<dyn Storage> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStorage::open(dir.path()).expect("open embedded store");
    Arc::new(InTempDir { store, _dir: dir })
}

#[async_trait]
impl Storage for InTempDir {
    async fn attach(&self, q: &QueueName, ttl: Option<Duration>) -> Result<Attached> {
        self.store.attach(q, ttl).await
    }
    async fn detach(&self, q: &QueueName) -> Result<u64> {
        self.store.detach(q).await
    }
    async fn push(&self, q: &QueueName, messages: Vec<Bytes>) -> Result<IdRange> {
        self.store.push(q, messages).await
    }
    async fn take(&self, q: &QueueName, max: u32, mode: TakeMode) -> Result<Vec<Message>> {
        self.store.take(q, max, mode).await
    }
    async fn take_many(&self, requests: &[TakeRequest], budget: u32) -> Vec<Taken> {
        self.store.take_many(requests, budget).await
    }
    async fn read(&self, q: &QueueName, from: u64, max: u32) -> Result<Vec<Message>> {
        self.store.read(q, from, max).await
    }
    async fn ack(&self, q: &QueueName, id: u64) -> Result<u64> {
        self.store.ack(q, id).await
    }
    async fn begin_reliable(&self, q: &QueueName, lock: &ReliableLock, last: u64) -> Result<u64> {
        self.store.begin_reliable(q, lock, last).await
    }
    async fn renew_reliable(&self, q: &QueueName, lock: &ReliableLock) -> Result<bool> {
        self.store.renew_reliable(q, lock).await
    }
    async fn end_reliable(&self, q: &QueueName, lock: &ReliableLock) -> Result<bool> {
        self.store.end_reliable(q, lock).await
    }
    async fn lease(
        &self,
        q: &QueueName,
        owner: &str,
        max: u32,
        visibility: Duration,
    ) -> Result<Leases> {
        self.store.lease(q, owner, max, visibility).await
    }
    async fn settle(&self, q: &QueueName, token: LeaseToken, s: Settlement) -> Result<Settled> {
        self.store.settle(q, token, s).await
    }
    async fn release_leases(&self, q: &QueueName, owner: &str) -> Result<u64> {
        self.store.release_leases(q, owner).await
    }
    async fn set_max_deliveries(&self, q: &QueueName, max: u32) -> Result<()> {
        self.store.set_max_deliveries(q, max).await
    }
    async fn close(&self, q: &QueueName) -> Result<bool> {
        self.store.close(q).await
    }
    async fn flush(&self, q: &QueueName) -> Result<u64> {
        self.store.flush(q).await
    }
    async fn info(&self, q: &QueueName) -> Result<Option<QueueInfo>> {
        self.store.info(q).await
    }
    async fn list_queues(&self, filter: &QueueFilter) -> Result<QueuePage> {
        self.store.list_queues(filter).await
    }
    async fn list_channels(&self, filter: &ChannelFilter) -> Result<ChannelPage> {
        self.store.list_channels(filter).await
    }
    async fn get_metadata(&self, q: &QueueName, key: &str) -> Result<Option<String>> {
        self.store.get_metadata(q, key).await
    }
    async fn set_metadata(&self, q: &QueueName, key: &str, value: &str) -> Result<()> {
        self.store.set_metadata(q, key, value).await
    }
    fn watch(&self) -> Notifications {
        self.store.watch()
    }
    async fn publish(&self, c: &ChannelName, message: Bytes) -> Result<u64> {
        self.store.publish(c, message).await
    }
    async fn subscribe(&self, c: &ChannelName) -> Result<Subscription> {
        self.store.subscribe(c).await
    }
    async fn object_save(
        &self,
        o: &ObjectName,
        fields: Vec<(String, String)>,
        ttl: Option<Duration>,
    ) -> Result<()> {
        self.store.object_save(o, fields, ttl).await
    }
    async fn object_load(&self, o: &ObjectName) -> Result<Option<ObjectFields>> {
        self.store.object_load(o).await
    }
    async fn object_touch(&self, o: &ObjectName, ttl: Duration) -> Result<bool> {
        self.store.object_touch(o, ttl).await
    }
}

busmq_storage::conformance_tests!(open());
