//! NATS JetStream through async-nats: one file-storage stream with a
//! subject per queue, publish with ack (the server has stored the message),
//! a durable pull consumer per queue with explicit acks.

use anyhow::{Context, anyhow};
use async_nats::jetstream::{self, consumer, stream};
use busmq_client::Bytes;
use futures::{FutureExt, StreamExt};

use super::token;
use crate::BenchArgs;
use crate::transport::{Consumer, Producer, Recorder, Ticket, Transport};

pub struct Nats {
    url: String,
    setup: jetstream::Context,
    prefetch: usize,
    /// Publish acks one producer may await: every batch it may have in
    /// flight (async-nats' default, 5,000, stalls a producer before its
    /// `--in-flight` bound does).
    max_ack_inflight: usize,
}

impl Nats {
    pub async fn connect(url: &str, args: &BenchArgs) -> anyhow::Result<Nats> {
        let client = async_nats::connect(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Nats {
            url: url.to_owned(),
            setup: jetstream::new(client),
            prefetch: args.prefetch as usize,
            max_ack_inflight: args.in_flight * args.queues.div_ceil(args.producers) * args.batch,
        })
    }

    async fn context(&self) -> anyhow::Result<jetstream::Context> {
        let client = async_nats::connect(&self.url)
            .await
            .with_context(|| format!("connecting to {}", self.url))?;
        // Publish acks wait up to the request timeout (10 s by default);
        // under this load the last acks of a run took longer once.
        Ok(jetstream::ContextBuilder::new()
            .timeout(std::time::Duration::from_secs(60))
            .max_ack_inflight(self.max_ack_inflight)
            .build(client))
    }
}

/// The stream holding a run's queues: named after their common prefix
/// (`bench.<run>.<i>` → `bench_<run>`).
fn stream_name(queue: &str) -> String {
    token(queue.rsplit_once('.').map_or(queue, |(prefix, _)| prefix))
}

impl Transport for Nats {
    type Producer = NatsProducer;
    type Consumer = NatsConsumer;

    async fn prepare(&self, queues: &[String]) -> anyhow::Result<()> {
        let first = queues.first().context("no queues")?;
        self.setup
            .create_stream(stream::Config {
                name: stream_name(first),
                subjects: queues.to_vec(),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!(e).context("creating the JetStream stream"))?;
        Ok(())
    }

    async fn producer(&self, queues: Vec<String>) -> anyhow::Result<NatsProducer> {
        Ok(NatsProducer {
            js: self.context().await?,
            subjects: queues,
        })
    }

    async fn consumers(&self, queues: Vec<String>) -> anyhow::Result<Vec<NatsConsumer>> {
        let js = self.context().await?;
        let mut consumers = Vec::with_capacity(queues.len());
        for queue in queues {
            let stream = js
                .get_stream(stream_name(&queue))
                .await
                .map_err(|e| anyhow!(e))?;
            let consumer: consumer::PullConsumer = stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some(token(&queue)),
                    filter_subject: queue.clone(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    max_ack_pending: (self.prefetch * 4) as i64,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow!(e).context("creating a pull consumer"))?;
            let messages = consumer
                .stream()
                .max_messages_per_batch(self.prefetch)
                .messages()
                .await
                .map_err(|e| anyhow!(e))?;
            consumers.push(NatsConsumer { messages });
        }
        Ok(consumers)
    }

    async fn cleanup(&self, queues: &[String]) {
        if let Some(first) = queues.first() {
            let _ = self.setup.delete_stream(stream_name(first)).await;
        }
    }
}

pub struct NatsProducer {
    js: jetstream::Context,
    subjects: Vec<String>,
}

impl Producer for NatsProducer {
    async fn push_batch(
        &mut self,
        queue: usize,
        payload: Bytes,
        count: usize,
    ) -> anyhow::Result<Ticket> {
        // JetStream has no batch publish: one message each, acks awaited
        // together.
        let mut acks = Vec::with_capacity(count);
        for _ in 0..count {
            let ack = self
                .js
                .publish(self.subjects[queue].clone(), payload.clone())
                .await
                .map_err(|e| anyhow!(e))?;
            acks.push(ack);
        }
        // Spawned so acks are read (and their in-flight permits returned)
        // while this producer waits to publish more.
        let acked = tokio::spawn(async move {
            for ack in acks {
                ack.await.map_err(|e| anyhow!(e))?;
            }
            anyhow::Ok(count as u64)
        });
        Ok(Box::pin(async move { acked.await? }))
    }
}

pub struct NatsConsumer {
    messages: consumer::pull::Stream,
}

impl NatsConsumer {
    async fn take(
        &mut self,
        message: Result<jetstream::Message, impl std::error::Error + Send + Sync + 'static>,
        recorder: &mut Recorder,
    ) -> anyhow::Result<()> {
        let message = message.map_err(|e| anyhow!(e))?;
        recorder.record(&message.payload);
        message.ack().await.map_err(|e| anyhow!(e))?;
        Ok(())
    }
}

impl Consumer for NatsConsumer {
    async fn next_batch(&mut self, recorder: &mut Recorder) -> anyhow::Result<bool> {
        let Some(first) = self.messages.next().await else {
            return Ok(false);
        };
        self.take(first, recorder).await?;
        // Everything already received is this batch.
        while let Some(Some(next)) = self.messages.next().now_or_never() {
            self.take(next, recorder).await?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_stream_per_run() {
        assert_eq!(stream_name("bench.1f.7"), "bench_1f");
        assert_eq!(stream_name("bench.1f.70"), "bench_1f");
        assert_eq!(stream_name("plain"), "plain");
    }
}
