//! What the broker's integration tests share: a broker on port 0 over the
//! store the test's deployment asks for, and the generated gRPC client with
//! a few conveniences.

#![allow(dead_code)] // each test binary uses its own part

use std::sync::Arc;
use std::time::Duration;

use busmq_broker::BrokerConfig;
use busmq_proto::v1::{
    self, ConsumeEvent, ConsumeMode, ConsumeRequest, consume_event::Event,
    queues_client::QueuesClient,
};
use busmq_storage::Storage;
use busmq_storage::memory::MemoryStorage;
use busmq_storage::remote::RemoteStorage;
use busmq_testkit::Process;
use busmq_testkit::deployment::{self, Deployment};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::Channel;

/// A protobuf duration of whole seconds.
pub fn secs(seconds: i64) -> busmq_proto::prost_types::Duration {
    busmq_proto::prost_types::Duration { seconds, nanos: 0 }
}

/// A protobuf duration of whole milliseconds.
pub fn millis(ms: u64) -> busmq_proto::prost_types::Duration {
    busmq_proto::duration::to_proto(Duration::from_millis(ms))
}

pub struct Broker {
    pub client: QueuesClient<Channel>,
    _served: Served,
}

/// A broker serving for a test: stopped when this is dropped, then the
/// storage process of a split deployment with it.
pub struct Served {
    pub addr: std::net::SocketAddr,
    _stop: tokio_util::sync::DropGuard,
    _storage: Option<Process>,
}

impl Served {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected channel to the broker.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

/// The store of the running test's deployment: a memory store in this
/// process (the default, as `busmq serve` has it), or a client of a
/// `busmq-storage` process (memory backend) started for this test and
/// returned with it.
pub async fn store() -> (Arc<dyn Storage>, Option<Process>) {
    match deployment::current().unwrap_or(Deployment::InProcess) {
        Deployment::InProcess => (Arc::new(MemoryStorage::new()), None),
        Deployment::Split => {
            let process = busmq_testkit::storage().await;
            let remote = RemoteStorage::connect_lazy(&process.url()).unwrap();
            (Arc::new(remote), Some(process))
        }
    }
}

pub async fn broker() -> Broker {
    broker_with(BrokerConfig::default()).await
}

/// A broker with `config` over a fresh store of the test's deployment,
/// serving until the returned [`Served`] is dropped.
pub async fn serve(config: BrokerConfig) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let (storage, process) = store().await;
    tokio::spawn(busmq_broker::serve(
        listener,
        storage,
        config,
        shutdown.clone(),
    ));
    Served {
        addr,
        _stop: shutdown.drop_guard(),
        _storage: process,
    }
}

pub async fn broker_with(config: BrokerConfig) -> Broker {
    let served = serve(config).await;
    let client = QueuesClient::new(served.channel().await);
    Broker {
        client,
        _served: served,
    }
}

impl Broker {
    pub async fn attach(&self, queue: &str) -> v1::AttachResponse {
        self.client
            .clone()
            .attach(v1::AttachRequest {
                max_deliveries: None,
                queue: queue.into(),
                ttl: None,
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn push(
        &self,
        queue: &str,
        messages: Vec<Bytes>,
    ) -> Result<v1::PushResponse, tonic::Status> {
        self.client
            .clone()
            .push(v1::PushRequest {
                queue: queue.into(),
                messages,
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn consume(&self, req: ConsumeRequest) -> Result<Consumer, tonic::Status> {
        let mut stream = self.client.clone().consume(req).await?.into_inner();
        // The first event is always `consuming`; errors arrive instead.
        match stream.message().await? {
            Some(ConsumeEvent {
                event: Some(Event::Consuming(c)),
            }) => Ok(Consumer {
                stream,
                redelivered: c.redelivered,
            }),
            other => panic!("expected consuming, got {other:?}"),
        }
    }

    pub async fn ack(&self, queue: &str, id: u64) -> Result<u64, tonic::Status> {
        self.client
            .clone()
            .ack(v1::AckRequest {
                queue: queue.into(),
                target: Some(v1::ack_request::Target::Id(id)),
            })
            .await
            .map(|r| r.into_inner().removed)
    }

    pub async fn info(&self, queue: &str) -> v1::QueueInfo {
        self.client
            .clone()
            .info(v1::InfoRequest {
                queue: queue.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }
}

pub struct Consumer {
    pub stream: Streaming<ConsumeEvent>,
    pub redelivered: u64,
}

impl Consumer {
    /// Next messages, or `None` when the stream ended; panics on `closed`.
    pub async fn next(&mut self) -> Option<Vec<v1::Message>> {
        match self.stream.message().await.unwrap()?.event? {
            Event::Messages(batch) => Some(batch.messages),
            other => panic!("unexpected event {other:?}"),
        }
    }

    pub async fn take(&mut self, n: usize) -> Vec<v1::Message> {
        let mut got = Vec::new();
        while got.len() < n {
            let batch = tokio::time::timeout(Duration::from_secs(10), self.next())
                .await
                .expect("messages within 10 s")
                .expect("stream still open");
            got.extend(batch);
        }
        got
    }
}

pub fn req(queue: &str, mode: ConsumeMode) -> ConsumeRequest {
    ConsumeRequest {
        queue: queue.into(),
        mode: mode as i32,
        ..Default::default()
    }
}

pub fn msgs(range: std::ops::Range<u32>) -> Vec<Bytes> {
    range.map(|i| Bytes::from(format!("m{i}"))).collect()
}
